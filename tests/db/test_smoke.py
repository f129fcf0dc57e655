from twotower.db import Database


def test_db_fixture_has_schema(db: Database) -> None:
    with db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM videos").fetchone()
    assert row == (0,)
