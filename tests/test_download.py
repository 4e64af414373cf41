"""Fetching official files: progress + checksum record, and a fast, clear failure offline."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
from helpers import meta, review, write_gz_lines

from pipeline.data.amazon import DataError, ensure_raw


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    write_gz_lines(root / "reviews_Beauty_5.json.gz", [review("u", "a", 1)])
    write_gz_lines(root / "meta_Beauty.json.gz", [meta("a")])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def test_download_records_and_verifies_checksum(tmp_path, server):
    raw = tmp_path / "raw"
    reviews, meta_path = ensure_raw(raw, "beauty", base_url=server)
    assert reviews == raw / "beauty" / "reviews_Beauty_5.json.gz" and reviews.is_file()
    side = reviews.with_name(reviews.name + ".sha256")
    assert side.read_text().split()[1] == reviews.name
    assert ensure_raw(raw, "beauty", base_url=server) == (reviews, meta_path)  # found, verified
    reviews.write_bytes(reviews.read_bytes() + b"x")
    with pytest.raises(DataError, match="does not match the recorded"):
        ensure_raw(raw, "beauty", base_url=server)


def test_offline_fails_fast_naming_files_and_places(tmp_path):
    with pytest.raises(DataError) as err:
        ensure_raw(tmp_path / "raw", "toys", base_url="http://127.0.0.1:9/", timeout=2)
    msg = str(err.value)
    assert "reviews_Toys_and_Games_5.json.gz" in msg and "meta_Toys_and_Games.json.gz" in msg
    assert str(tmp_path / "raw" / "toys") in msg and "raw_dir" in msg
    assert not (tmp_path / "raw" / "toys" / "reviews_Toys_and_Games_5.json.gz").exists()  # no half file


def test_download_disabled_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="download=false"):
        ensure_raw(tmp_path, "cds", allow_download=False)
    with pytest.raises(DataError, match="unknown dataset 'movies'"):
        ensure_raw(tmp_path, "movies")
