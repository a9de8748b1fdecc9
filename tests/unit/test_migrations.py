from pathlib import Path

import pytest

from tables.migrate import MigrationError, discover


def test_shipped_migrations_are_numbered_without_gaps_and_split_into_statements() -> None:
    migrations = discover()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert any("CREATE TABLE IF NOT EXISTS events" in s for m in migrations for s in m.statements())


def test_a_gap_in_numbering_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="without gaps"):
        discover(tmp_path)


def test_statements_split_on_semicolons_at_line_end_and_skip_comments(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("-- c;\nCREATE TABLE a (x String DEFAULT 'a;b');\nSELECT 1;\n")
    [m] = discover(tmp_path)
    assert m.statements() == ["CREATE TABLE a (x String DEFAULT 'a;b')", "SELECT 1"]
