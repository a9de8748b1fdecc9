"""Rearview's Python SDK: track events over HTTP, gRPC or straight to Kafka.

    from rearview_sdk import Client
    client = Client("http://127.0.0.1:8000", write_key="...")
    client.track("button_click", "user-1", properties={"button_id": "signup"})

`Client` (threads) and `AsyncClient` (asyncio) batch in the background, retry with backoff and
never block or raise into the app; see rearview_sdk/client.py.
"""

from rearview_sdk.aio import AsyncClient
from rearview_sdk.buffer import Backoff, Buffer
from rearview_sdk.client import Client
from rearview_sdk.events import (
    LIBRARY,
    VERSION,
    DeliveryError,
    DeliveryFailed,
    Event,
    EventRejected,
    InvalidEvent,
    QueueFull,
)
from rearview_sdk.transports import GrpcTransport, HttpTransport, KafkaTransport

__all__ = [
    "LIBRARY", "VERSION", "AsyncClient", "Backoff", "Buffer", "Client", "DeliveryError",
    "DeliveryFailed", "Event", "EventRejected", "GrpcTransport", "HttpTransport", "InvalidEvent",
    "KafkaTransport", "QueueFull",
]
