"""The registry's HTTP face: Confluent Schema Registry's REST API over a :class:`SchemaStore`.

Handlers only translate: they read path, query and body, call one store method, and shape
the answer as Confluent does. Errors become Confluent's ``{"error_code", "message"}`` body.
Every store call runs under one ``asyncio.Lock`` (so concurrent registrations cannot take
the same id) in a worker thread (so the fsync of a change never stalls the event loop).

Modes (READWRITE, READONLY, READONLY_OVERRIDE, IMPORT) follow Confluent, as do
``normalize`` (query parameter or config) and ``GET /schemas``. Not implemented: contexts
other than the default one (``GET /contexts`` answers ``["."]``), metadata and rule sets
(accepted in bodies, ignored), JSON Schema and Protobuf (refused with 42201), and schema
associations (``/associations`` answers 404, which clients read as "this registry has none").
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web

from app.embedded.registry.avro_schema import AVRO
from app.embedded.registry.compatibility import (
    CompatibilityLevel,
    CompatibilityResult,
    parse_level,
)
from app.embedded.registry.exceptions import (
    InvalidCompatibilityLevel,
    InvalidMode,
    InvalidSchema,
    RegistryError,
    SchemaNotFound,
)
from app.embedded.registry.records import (
    Mode,
    Reference,
    RegisteredVersion,
    StoredSchema,
    Version,
    parse_mode,
    parse_version,
)
from app.embedded.registry.store import SchemaStore

log = structlog.get_logger(__name__)

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
ACCEPTED_CONTENT_TYPES = frozenset(
    {
        CONTENT_TYPE,
        "application/vnd.schemaregistry+json",
        "application/json",
        "application/octet-stream",
        "",
    }
)

STORE = web.AppKey("store", SchemaStore)
LOCK = web.AppKey("lock", asyncio.Lock)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- responses and request parsing ---------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, content_type=CONTENT_TYPE)


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"error_code": code, "message": message}, status=status)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").strip().lower() == "true"


def _optional_flag(request: web.Request, name: str) -> bool | None:
    """True or False when the query names *name*, else None (the config decides)."""
    return _flag(request, name) if name in request.query else None


def _int_arg(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(reason=f"Query parameter {name} must be an integer") from None


def _schema_id(request: web.Request) -> int:
    text = request.match_info["id"]
    try:
        return int(text)
    except ValueError:
        raise SchemaNotFound(f"Schema {text} not found") from None


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"Request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPUnprocessableEntity(reason="Request body must be a JSON object")
    return body


async def _schema_request(request: web.Request) -> tuple[str, str | None, list[Reference]]:
    """``schema``, ``schemaType`` and ``references`` of a register/lookup/compatibility body."""
    return _schema_fields(await _body(request))


def _schema_fields(body: dict[str, Any]) -> tuple[str, str | None, list[Reference]]:
    schema = body.get("schema")
    if not isinstance(schema, str) or not schema.strip():
        raise InvalidSchema('Invalid schema: the request has no "schema" string')
    schema_type = body.get("schemaType")
    if schema_type is not None and not isinstance(schema_type, str):
        raise InvalidSchema(f"Invalid schema type {schema_type!r}")
    references = body.get("references") or []
    if not isinstance(references, list):
        raise InvalidSchema('Invalid schema: "references" must be a list')
    return schema, schema_type, [Reference.from_json(r) for r in references]


def _schema_body(stored: StoredSchema) -> dict[str, Any]:
    body: dict[str, Any] = {"schema": stored.text, "guid": stored.guid}
    if stored.schema_type != AVRO:
        body["schemaType"] = stored.schema_type
    if stored.references:
        body["references"] = [r.to_json() for r in stored.references]
    return body


def _version_body(registered: RegisteredVersion) -> dict[str, Any]:
    return {
        "subject": registered.subject,
        "version": registered.version,
        "id": registered.schema.id,
        **_schema_body(registered.schema),
    }


def _compatibility_body(result: CompatibilityResult, verbose: bool) -> dict[str, Any]:
    return {
        "is_compatible": result.is_compatible,
        "messages": list(result.messages) if verbose else [],
    }


async def _call(request: web.Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one store call, serialised with every other, off the event loop."""
    async with request.app[LOCK]:
        return await asyncio.get_running_loop().run_in_executor(None, partial(fn, *args, **kwargs))


# -- middleware ----------------------------------------------------------------------------


@web.middleware
async def confluent_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse unknown content types and answer every error with Confluent's body."""
    if request.method in ("POST", "PUT") and request.content_type not in ACCEPTED_CONTENT_TYPES:
        return _error(415, 415, f"HTTP 415 Unsupported Media Type: {request.content_type}")
    try:
        return await handler(request)
    except RegistryError as exc:
        return _error(exc.http_status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status in (400, 422) else f"HTTP {exc.status} {exc.reason}"
        return _error(exc.status, exc.status, message)
    except RecursionError:
        # A defect in a recursive walk: one line, not a thousand frames of traceback.
        log.error("registry_recursion_error", method=request.method, path=request.path)
        return _error(500, 50001, "Error in the backend data store (see the registry's log)")
    except Exception:
        log.exception("registry_internal_error", method=request.method, path=request.path)
        return _error(500, 50001, "Error in the backend data store (see the registry's log)")


# -- handlers ------------------------------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    return _json({})


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def schema_types(request: web.Request) -> web.Response:
    return _json([AVRO])


async def schema_by_id(request: web.Request) -> web.Response:
    stored = await _call(request, request.app[STORE].schema_by_id, _schema_id(request))
    return _json(_schema_body(stored))


async def raw_schema_by_id(request: web.Request) -> web.Response:
    stored = await _call(request, request.app[STORE].schema_by_id, _schema_id(request))
    return web.Response(text=stored.text, content_type=CONTENT_TYPE)


async def subjects_by_id(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subjects = await _call(
        request, store.subjects_for_id, _schema_id(request), deleted=_flag(request, "deleted")
    )
    wanted = request.query.get("subject")
    return _json([s for s in subjects if wanted is None or s == wanted])


async def versions_by_id(request: web.Request) -> web.Response:
    store = request.app[STORE]
    pairs = await _call(
        request, store.versions_for_id, _schema_id(request), deleted=_flag(request, "deleted")
    )
    wanted = request.query.get("subject")
    return _json([{"subject": s, "version": v} for s, v in pairs if wanted is None or s == wanted])


async def schema_by_guid(request: web.Request) -> web.Response:
    stored = await _call(request, request.app[STORE].schema_by_guid, request.match_info["guid"])
    return _json({"id": stored.id, **_schema_body(stored)})


async def list_subjects(request: web.Request) -> web.Response:
    subjects = await _call(
        request,
        request.app[STORE].subjects,
        deleted=_flag(request, "deleted"),
        deleted_only=_flag(request, "deleted_only") or _flag(request, "deletedOnly"),
        prefix=request.query.get("subjectPrefix", ""),
    )
    return _json(subjects)


async def lookup(request: web.Request) -> web.Response:
    schema, schema_type, references = await _schema_request(request)
    found = await _call(
        request,
        request.app[STORE].lookup,
        request.match_info["subject"],
        schema,
        schema_type,
        references,
        deleted=_flag(request, "deleted"),
        normalize=_optional_flag(request, "normalize"),
    )
    return _json(_version_body(found))


async def delete_subject(request: web.Request) -> web.Response:
    subject = request.match_info["subject"]
    permanent = _flag(request, "permanent")
    versions = await _call(request, request.app[STORE].delete_subject, subject, permanent)
    log.info("subject_deleted", subject=subject, versions=versions, permanent=permanent)
    return _json(versions)


async def list_versions(request: web.Request) -> web.Response:
    versions = await _call(
        request,
        request.app[STORE].versions,
        request.match_info["subject"],
        deleted=_flag(request, "deleted"),
        deleted_only=_flag(request, "deleted_only") or _flag(request, "deletedOnly"),
    )
    return _json(versions)


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value < 0):
        return None  # Confluent's clients send -1 / 0 for "not given"
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 0 or name == "id" else None
    raise InvalidSchema(f'Invalid schema: "{name}" must be an integer')


async def register(request: web.Request) -> web.Response:
    subject = request.match_info["subject"]
    body = await _body(request)
    schema, schema_type, references = _schema_fields(body)
    registered = await _call(
        request,
        request.app[STORE].register,
        subject,
        schema,
        schema_type,
        references,
        normalize=_optional_flag(request, "normalize"),
        schema_id=_optional_int(body, "id"),
        version=_optional_int(body, "version"),
    )
    if registered.created:
        log.info(
            "schema_registered",
            subject=subject,
            version=registered.version,
            schema_id=registered.schema.id,
        )
    return _json(_version_body(registered))


async def _requested_version(request: web.Request) -> RegisteredVersion:
    return await _call(
        request,
        request.app[STORE].get_version,
        request.match_info["subject"],
        parse_version(request.match_info["version"]),
        deleted=_flag(request, "deleted"),
    )


async def get_version(request: web.Request) -> web.Response:
    return _json(_version_body(await _requested_version(request)))


async def raw_version_schema(request: web.Request) -> web.Response:
    registered = await _requested_version(request)
    return web.Response(text=registered.schema.text, content_type=CONTENT_TYPE)


async def referenced_by(request: web.Request) -> web.Response:
    ids = await _call(
        request,
        request.app[STORE].referenced_by,
        request.match_info["subject"],
        parse_version(request.match_info["version"]),
    )
    return _json(ids)


async def delete_version(request: web.Request) -> web.Response:
    subject = request.match_info["subject"]
    permanent = _flag(request, "permanent")
    version = await _call(
        request,
        request.app[STORE].delete_version,
        subject,
        parse_version(request.match_info["version"]),
        permanent,
    )
    log.info("version_deleted", subject=subject, version=version, permanent=permanent)
    return _json(version)


async def _compatibility(request: web.Request, version: Version | None) -> web.Response:
    """Confluent's answer: with ``verbose``, an invalid schema is ``is_compatible: false``
    with the parser's reason among the messages; without it, a 42201 error."""
    verbose = _flag(request, "verbose")
    try:
        schema, schema_type, references = await _schema_request(request)
        result = await _call(
            request,
            request.app[STORE].check_compatibility,
            request.match_info["subject"],
            schema,
            schema_type,
            references,
            version=version,
            normalize=_optional_flag(request, "normalize"),
        )
    except InvalidSchema as exc:
        if not verbose:
            raise
        result = CompatibilityResult(False, (exc.message,))
    return _json(_compatibility_body(result, verbose))


async def compatibility_with_version(request: web.Request) -> web.Response:
    return await _compatibility(request, parse_version(request.match_info["version"]))


async def compatibility_with_subject(request: web.Request) -> web.Response:
    return await _compatibility(request, None)


async def _requested_config(request: web.Request) -> tuple[CompatibilityLevel | None, bool | None]:
    """The level and ``normalize`` flag of a PUT /config body (either may be left out)."""
    try:
        body = await _body(request)
    except web.HTTPUnprocessableEntity:
        raise InvalidCompatibilityLevel(
            "Invalid compatibility level: body must be an object"
        ) from None
    value = body.get("compatibility", body.get("compatibilityLevel"))
    normalize = body.get("normalize")
    if not isinstance(normalize, bool):
        normalize = None
    if value is None and normalize is not None:
        return None, normalize
    return parse_level(value), normalize


def _config_body(level: CompatibilityLevel, normalize: bool | None, key: str) -> dict[str, Any]:
    body: dict[str, Any] = {key: level.value}
    if normalize is not None:
        body["normalize"] = normalize
    return body


async def get_global_config(request: web.Request) -> web.Response:
    store = request.app[STORE]
    level = await _call(request, store.global_level)
    normalize = await _call(request, store.global_normalize)
    return _json(_config_body(level, normalize or None, "compatibilityLevel"))


async def put_global_config(request: web.Request) -> web.Response:
    level, normalize = await _requested_config(request)
    stored = await _call(request, request.app[STORE].set_global_level, level, normalize)
    log.info("compatibility_set", compatibility=stored.value)
    return _json(_config_body(stored, normalize, "compatibility"))


async def delete_global_config(request: web.Request) -> web.Response:
    previous = await _call(request, request.app[STORE].reset_global_level)
    return _json({"compatibilityLevel": previous.value})


async def get_subject_config(request: web.Request) -> web.Response:
    store = request.app[STORE]
    subject = request.match_info["subject"]
    default_to_global = _flag(request, "defaultToGlobal")
    level = await _call(request, store.subject_level, subject, default_to_global=default_to_global)
    normalize = await _call(request, store.subject_normalize, subject, default_to_global)
    return _json(_config_body(level, normalize or None, "compatibilityLevel"))


async def put_subject_config(request: web.Request) -> web.Response:
    subject = request.match_info["subject"]
    level, normalize = await _requested_config(request)
    stored = await _call(request, request.app[STORE].set_subject_level, subject, level, normalize)
    log.info("compatibility_set", subject=subject, compatibility=stored.value)
    return _json(_config_body(stored, normalize, "compatibility"))


async def delete_subject_config(request: web.Request) -> web.Response:
    previous = await _call(
        request, request.app[STORE].delete_subject_level, request.match_info["subject"]
    )
    return _json({"compatibilityLevel": previous.value})


async def _requested_mode(request: web.Request) -> Mode:
    try:
        body = await _body(request)
    except web.HTTPUnprocessableEntity:
        raise InvalidMode("Invalid mode: body must be an object") from None
    return parse_mode(body.get("mode"))


async def get_global_mode(request: web.Request) -> web.Response:
    mode = await _call(request, request.app[STORE].global_mode)
    return _json({"mode": mode.value})


async def put_global_mode(request: web.Request) -> web.Response:
    mode = await _requested_mode(request)
    await _call(request, request.app[STORE].set_mode, None, mode, _flag(request, "force"))
    log.info("mode_set", mode=mode.value)
    return _json({"mode": mode.value})


async def get_subject_mode(request: web.Request) -> web.Response:
    mode = await _call(
        request,
        request.app[STORE].subject_mode,
        request.match_info["subject"],
        default_to_global=_flag(request, "defaultToGlobal"),
    )
    return _json({"mode": mode.value})


async def put_subject_mode(request: web.Request) -> web.Response:
    subject = request.match_info["subject"]
    mode = await _requested_mode(request)
    await _call(request, request.app[STORE].set_mode, subject, mode, _flag(request, "force"))
    log.info("mode_set", subject=subject, mode=mode.value)
    return _json({"mode": mode.value})


async def delete_subject_mode(request: web.Request) -> web.Response:
    mode = await _call(
        request, request.app[STORE].delete_subject_mode, request.match_info["subject"]
    )
    return _json({"mode": mode.value})


async def list_schemas(request: web.Request) -> web.Response:
    found = await _call(
        request,
        request.app[STORE].schemas,
        prefix=request.query.get("subjectPrefix", ""),
        deleted=_flag(request, "deleted"),
        latest_only=_flag(request, "latestOnly"),
        offset=_int_arg(request, "offset", 0),
        limit=_int_arg(request, "limit", -1),
    )
    return _json([_version_body(registered) for registered in found])


async def contexts(request: web.Request) -> web.Response:
    return _json(["."])


async def no_associations(request: web.Request) -> web.Response:
    return _error(404, 404, "HTTP 404 Not Found: this registry does not support associations")


# -- application and process -------------------------------------------------------------


def create_app(store: SchemaStore) -> web.Application:
    """The registry's aiohttp application over *store* (which the caller opens and closes)."""
    app = web.Application(middlewares=[confluent_errors], client_max_size=16 * 1024**2)
    app[STORE] = store
    app[LOCK] = asyncio.Lock()
    subject = "/subjects/{subject}"
    version = subject + "/versions/{version}"
    app.add_routes(
        [
            web.get("/", root),
            web.get("/health", health),
            web.get("/schemas/types", schema_types),
            web.get("/schemas/ids/{id}", schema_by_id),
            web.get("/schemas/ids/{id}/schema", raw_schema_by_id),
            web.get("/schemas/ids/{id}/subjects", subjects_by_id),
            web.get("/schemas/ids/{id}/versions", versions_by_id),
            web.get("/schemas/guids/{guid}", schema_by_guid),
            web.get("/subjects", list_subjects),
            web.post(subject, lookup),
            web.delete(subject, delete_subject),
            web.get(subject + "/versions", list_versions),
            web.post(subject + "/versions", register),
            web.get(version, get_version),
            web.get(version + "/schema", raw_version_schema),
            web.get(version + "/referencedby", referenced_by),
            web.delete(version, delete_version),
            web.post("/compatibility" + version, compatibility_with_version),
            web.post("/compatibility" + subject + "/versions", compatibility_with_subject),
            web.get("/config", get_global_config),
            web.put("/config", put_global_config),
            web.delete("/config", delete_global_config),
            web.get("/config/{subject}", get_subject_config),
            web.put("/config/{subject}", put_subject_config),
            web.delete("/config/{subject}", delete_subject_config),
            web.get("/mode", get_global_mode),
            web.put("/mode", put_global_mode),
            web.get("/mode/{subject}", get_subject_mode),
            web.put("/mode/{subject}", put_subject_mode),
            web.delete("/mode/{subject}", delete_subject_mode),
            web.get("/schemas", list_schemas),
            web.get("/contexts", contexts),
            web.route("*", "/associations", no_associations),
            web.route("*", "/associations/{tail:.*}", no_associations),
        ]
    )
    return app


def serve(host: str, port: int, data_dir: Path) -> None:
    """Serve the registry stored in *data_dir* until SIGINT or SIGTERM, then shut down cleanly.

    Raises :class:`~app.embedded.registry.exceptions.DataDirLocked` when another process owns
    *data_dir*, and ``OSError`` when the address cannot be bound.
    """
    asyncio.run(_serve(host, port, data_dir))


async def _serve(host: str, port: int, data_dir: Path) -> None:
    store = SchemaStore.open(data_dir)
    try:
        runner = web.AppRunner(create_app(store), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            bound_host, bound_port = runner.addresses[0][:2]
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            log.info(
                "registry_started", url=f"http://{bound_host}:{bound_port}", data_dir=str(data_dir)
            )
            await stop.wait()
            log.info("registry_stopping")
        finally:
            await runner.cleanup()
    finally:
        store.close()
