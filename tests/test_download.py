"""COCO download/verify logic on small zips made here, served from 127.0.0.1."""

import hashlib
import http.server
import threading
import zipfile

import pytest
from PIL import Image

from ssdwb.cli import main as cli
from ssdwb.data.download import DatasetError, download_coco, extract, fetch, verify_coco


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return hashlib.md5(path.read_bytes()).hexdigest()


def jpeg_bytes(tmp_path):
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "x.jpg")
    return (tmp_path / "x.jpg").read_bytes()


def ann_json(n):
    import json

    return json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8}
                                  for i in range(n)],
                       "annotations": [], "categories": [{"id": 1, "name": "a"}]})


@pytest.fixture
def served(tmp_path):
    """Three small COCO-like zips and an HTTP server with Range support that cuts the first
    response of every file half-way (an interrupted download)."""
    src = tmp_path / "src"
    src.mkdir()
    jpg = jpeg_bytes(tmp_path)
    files = {
        "train2017.zip": make_zip(src / "train2017.zip",
                                  {f"train2017/{i}.jpg": jpg + bytes(i) for i in range(3)}),
        "val2017.zip": make_zip(src / "val2017.zip", {f"val2017/{i}.jpg": jpg for i in range(2)}),
        "annotations_trainval2017.zip": make_zip(
            src / "annotations_trainval2017.zip",
            {"annotations/instances_train2017.json": ann_json(3),
             "annotations/instances_val2017.json": ann_json(2)}),
    }
    cut = set()
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            name = self.path.strip("/")
            data = (src / name).read_bytes()
            rng = self.headers.get("Range")
            requests.append((name, rng))
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            body = data[start:]
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if name not in cut:  # first response: send half, then drop the connection
                cut.add(name)
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    manifest = {name: (f"{base}/{name}", md5) for name, md5 in files.items()}
    yield manifest, requests, src
    server.shutdown()


def test_download_resumes_verifies_extracts(tmp_path, served):
    manifest, requests, _ = served
    out = tmp_path / "coco"
    report = download_coco(out, manifest, {"train2017": 3, "val2017": 2}, retries=3)
    assert any("train2017: 3 images" in line for line in report)
    assert len(list((out / "train2017").glob("*.jpg"))) == 3
    # every file was cut once and resumed with a Range request
    for name in manifest:
        ranges = [r for n, r in requests if n == name]
        assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    # a second call finds everything extracted and fetches nothing
    n = len(requests)
    download_coco(out, manifest, {"train2017": 3, "val2017": 2})
    assert len(requests) == n


def test_md5_mismatch_is_an_error_and_keeps_the_bytes(tmp_path, served):
    manifest, _, _ = served
    url, _ = manifest["val2017.zip"]
    with pytest.raises(DatasetError, match="md5 .* does not match"):
        fetch(url, tmp_path / "val2017.zip", md5="0" * 32, retries=3)
    assert (tmp_path / "val2017.zip.part.bad").exists()
    assert not (tmp_path / "val2017.zip").exists()


def test_offline_error_says_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="put the file at"):
        fetch("http://127.0.0.1:9/none.zip", tmp_path / "none.zip", retries=0)


def test_verify_reports_every_problem(tmp_path, served):
    manifest, _, src = served
    for name in manifest:
        extract(src / name, tmp_path)
    assert verify_coco(tmp_path, manifest, {"train2017": 3, "val2017": 2})
    (tmp_path / "val2017" / "0.jpg").unlink()
    (tmp_path / "annotations" / "instances_train2017.json").write_text("{")
    with pytest.raises(DatasetError) as e:
        verify_coco(tmp_path, manifest, {"train2017": 3, "val2017": 2})
    assert "val2017: 1 images, expected 2" in str(e.value)
    assert "instances_train2017.json: not a valid JSON" in str(e.value)
    # the real expected counts: 118,287 / 5,000 images
    with pytest.raises(DatasetError, match="expected 118287"):
        verify_coco(tmp_path, manifest)


def test_zip_slip_and_bad_zip(tmp_path):
    make_zip(tmp_path / "evil.zip", {"../evil.txt": "x"})
    with pytest.raises(DatasetError, match="outside"):
        extract(tmp_path / "evil.zip", tmp_path / "out")
    (tmp_path / "junk.zip").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="not a valid zip"):
        extract(tmp_path / "junk.zip", tmp_path / "out")


def test_cli_verify_and_synth(tmp_path, capsys):
    assert cli(["data", "verify", str(tmp_path / "missing")]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert cli(["data", "synth", str(tmp_path / "s"), "--train", "2", "--val", "1"]) == 0
    assert (tmp_path / "s" / "annotations" / "instances_val.json").exists()
