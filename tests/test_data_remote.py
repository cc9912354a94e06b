"""Remote shards (`vlm.data.remote`): a local HTTP server on 127.0.0.1 and `pipe:cat` give exactly the
samples of the local whole-shard read; kill -9 + resume over HTTP continues exactly; a connection
dropped mid-shard is retried; a server that never answers is a named, counted skip within the timeout.
"""
from __future__ import annotations

import http.server
import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import helpers_media as H
import pytest
import torch

from vlm.data.pipeline import ShardPipeline
from vlm.data.remote import REMOTE_ERROR, RemoteSettings, StreamError, stream_shard
from vlm.data.writer import ShardWriter, encode_image

N_SHARDS, PER_SHARD = 4, 6
CFG = dict(batch_size=2, max_len=96, shuffle_buffer=8, seed=5, split="shard", remote_timeout=2.0,
           remote_retries=2, remote_backoff=0.05)


class Handler(http.server.BaseHTTPRequestHandler):
    """Files of `server.root`, with Range requests; `server.mode`: "ok", "drop" (the first GET of each
    path sends half the body and closes) or "silent" (never answers)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        if srv.mode == "silent":
            srv.release.wait(30)
            return
        path = Path(srv.root) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body = data[start:]
        if srv.mode == "drop" and self.path not in srv.dropped:
            srv.dropped.add(self.path)
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


def serve(root, mode="ok"):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.root, srv.mode, srv.log, srv.dropped, srv.release = str(root), mode, [], set(), threading.Event()
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def stop(srv):
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def model():
    import vlm.families
    return vlm.families.build("llava", "tiny", audio=None, music=None, video=None).eval()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("remote") / "shards"
    colors = ["red", "green", "blue", "yellow"]
    with ShardWriter(folder, max_count=PER_SHARD) as w:
        for i in range(N_SHARDS * PER_SHARD):
            c = colors[i % 4]
            if i % 5 == 3:
                w.write({"__key__": f"t{i:03d}", "json": {"conversations": [
                    {"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": str(i)}]}})
            else:
                w.write({"__key__": f"s{i:03d}", "jpg": encode_image(H.image(c, 40), "jpg"), "json": {"conversations": [
                    {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": c}]}})
    return folder


@pytest.fixture(scope="module")
def server(shards):
    srv = serve(shards)
    yield srv
    stop(srv)


def local(shards) -> str:
    return str(shards / f"shard-{{000000..{N_SHARDS - 1:06d}}}.tar")


def url(srv, name=f"shard-{{000000..{N_SHARDS - 1:06d}}}.tar") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/{name}"


def summary(batches) -> list:
    """What a batch holds, comparable across runs: keys, token ids, pixels."""
    return [(b["sample_keys"], b["input_ids"].tolist(), [x.sum().item() for x in b["media"].get("image", [])])
            for b in batches]


def read(spec, model, n=None, **kw):
    pipe = ShardPipeline(spec, model.processor, **{**CFG, "epochs": 1, **kw})
    return summary(itertools.islice(pipe, n) if n else pipe), pipe


@pytest.mark.parametrize("workers", [0, 2])
def test_http_and_pipe_cat_read_exactly_the_local_whole_shard_samples(model, shards, server, workers):
    want, _ = read(local(shards), model, num_workers=workers)
    assert sum(len(k) for k, _, _ in want) == N_SHARDS * PER_SHARD
    got_http, pipe = read(url(server), model, num_workers=workers)
    assert got_http == want and pipe.stats.errors == 0
    if workers == 0:
        got_pipe, _ = read(f"pipe:cat {shards}/shard-{{000000..{N_SHARDS - 1:06d}}}.tar", model)
        assert got_pipe == want
        # over 2 ranks: remote shards are always dealt whole (even when split="sample" is asked for);
        # local ones keep the sample-exact split
        two = dict(world_size=2, rank=1)
        whole, _ = read(local(shards), model, **two)
        assert read(url(server), model, split="sample", **two)[0] == whole
        assert read(local(shards), model, **{**two, "split": "sample"})[0] != whole


def _victim(spec, state_file, log_file):
    """Iterate forever over HTTP, saving the state (atomically) and then logging after every batch."""
    import vlm.families
    torch.set_num_threads(1)
    m = vlm.families.build("llava", "tiny", audio=None, music=None, video=None)
    pipe = ShardPipeline(spec, m.processor, **CFG)
    with open(log_file, "a") as log:
        for b in pipe:
            tmp = f"{state_file}.tmp"
            Path(tmp).write_text(json.dumps(pipe.state_dict()))
            os.replace(tmp, state_file)
            log.write(json.dumps(summary([b])[0]) + "\n")
            log.flush()
            time.sleep(0.05)


def jsonable(x):
    return json.loads(json.dumps(x))


def test_kill9_and_resume_over_http_continues_exactly(model, server, tmp_path):
    spec, total = url(server), 40
    want = jsonable(read(spec, model, n=total, epochs=None)[0])
    state_file, log_file = tmp_path / "state.json", tmp_path / "log.jsonl"
    p = multiprocessing.get_context("fork").Process(target=_victim, args=(spec, str(state_file), str(log_file)))
    p.start()
    deadline = time.time() + 300
    while time.time() < deadline and p.is_alive() and not (
            log_file.exists() and len(log_file.read_text().splitlines()) >= 9):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert p.exitcode == -signal.SIGKILL
    state = json.loads(state_file.read_text())
    seen = [json.loads(x) for x in log_file.read_text().splitlines()]
    k = sum(state["positions"]) // CFG["batch_size"]        # batches before the saved state (no sample skipped)
    assert 9 <= k < total - 5 and seen[:k] == want[:k]
    # the checkpoint holds the shard order (seed, epoch), and for every remote shard read its size
    assert state["seed"] == CFG["seed"] and state["remote_shards"] and set(state["remote_shards"]) <= {
        url(server, f"shard-{i:06d}.tar") for i in range(N_SHARDS)}
    server.log.clear()
    pipe = ShardPipeline(spec, model.processor, **CFG)
    pipe.load_state_dict(state)
    resumed = jsonable(summary(itertools.islice(pipe, total - k)))
    assert resumed == want[k:]
    assert server.log                                        # what the shuffle buffer held was read again


def test_a_connection_dropped_mid_shard_is_retried_from_the_sample(model, shards):
    srv = serve(shards, mode="drop")
    try:
        want, _ = read(local(shards), model)
        got, pipe = read(url(srv), model)
        assert got == want and pipe.stats.errors == 0
        ranges = [r for _, r in srv.log if r]
        assert len(ranges) == N_SHARDS                        # each shard broke once, resumed by a Range request
    finally:
        stop(srv)


def test_a_dead_server_is_a_named_counted_skip_within_the_timeout(model, shards, server):
    dead = serve(shards, mode="silent")
    try:
        settings = RemoteSettings(timeout=0.5, retries=1, backoff=0.1)
        t0 = time.time()
        out = list(stream_shard(url(dead, "shard-000000.tar"), settings))
        assert time.time() - t0 < (settings.retries + 1) * settings.timeout + settings.backoff + 10.0
        assert len(out) == 1 and isinstance(out[0], StreamError) and out[0].reason == REMOTE_ERROR
        assert "shard-000000.tar" in out[0].message and "2 failed attempts" in out[0].message
        # in a pipeline: the dead shard is skipped and counted under its URL, the others are read
        spec = [url(server, "shard-{000000..000002}.tar"), url(dead, "shard-000003.tar"),
                "pipe:sleep 120", f"pipe:cat {shards}/missing.tar"]
        t0 = time.time()
        got, pipe = read(spec, model, remote_timeout=0.5, remote_retries=1, remote_backoff=0.1, max_error_rate=1.0)
        assert time.time() - t0 < 60                           # the hanging pipe would take 120 s
        assert sum(len(k) for k, _, _ in got) == 3 * PER_SHARD
        assert pipe.stats.skipped[REMOTE_ERROR] == 3
        assert set(pipe.stats.by_shard) == {url(dead, "shard-000003.tar"), "pipe:sleep 120", f"pipe:cat {shards}/missing.tar"}
    finally:
        stop(dead)


def test_a_truncated_remote_shard_is_what_it_is_locally(tmp_path, shards, server):
    data = (shards / "shard-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:len(data) * 2 // 3])
    from vlm.data.reader import scan_shard
    local_refs = list(scan_shard(str(tmp_path / "cut.tar")))
    remote = list(stream_shard(f"pipe:cat {tmp_path}/cut.tar", RemoteSettings(timeout=2, retries=0)))
    assert [r.key for r in local_refs] == [r.key for r in remote]
    assert local_refs[-1].error == remote[-1].reason == "truncated_tar"


def test_a_recipe_trains_over_http(server, tmp_path, one_intra_op_thread):
    """`vlm train` with `data.*.shards` on a web server: the checkpoint's data state holds the shard sizes."""
    import test_train_common as C

    from vlm.train import checkpoint as ckpt_lib
    from vlm.train.recipe import load_recipe
    from vlm.train.trainer import train
    path = C.write_recipe(tmp_path / "r.yaml", url(server), [C.stage("sft", ["media.*.projector.*"], steps=2)],
                          shuffle_buffer=4, remote_timeout=5)
    train(load_recipe(str(path)), tmp_path / "run")
    rows, end = C.step_rows(tmp_path / "run"), C.events(tmp_path / "run", "stage_end")[0]
    assert len(rows) == 2 and all(r["loss"] > 0 for r in rows.values()) and end["data"]["samples"] >= 8
    data = ckpt_lib.load_rank(ckpt_lib.latest(tmp_path / "run"), 0)["data"]
    assert data["remote_shards"] and all(v[0] == PER_SHARD for v in data["remote_shards"].values())


def test_a_split_sample_or_a_gzipped_tar_reads_remotely_as_it_does_locally(tmp_path):
    """A key seen again after other members is `split_sample` on both readers (the stream had its own grouping);
    a .tar.gz is named as one on both (the stream said "corrupt tar header at byte 0")."""
    import gzip
    import io
    import tarfile

    from vlm.data.reader import scan_shard
    with tarfile.open(tmp_path / "split.tar", "w") as tf:
        for name in ("000.txt", "001.txt", "000.jpg", "002.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    local = [(r.key, r.error or "") for r in scan_shard(str(tmp_path / "split.tar"))]
    remote = [(r.key, getattr(r, "reason", "")) for r in
              stream_shard(f"pipe:cat {tmp_path}/split.tar", RemoteSettings(timeout=2, retries=0))]
    assert local == remote == [("000", ""), ("001", ""), ("000", "split_sample"), ("002", "")]
    (tmp_path / "x.tar.gz").write_bytes(gzip.compress((tmp_path / "split.tar").read_bytes()))
    [local] = scan_shard(str(tmp_path / "x.tar.gz"))
    [remote] = stream_shard(f"pipe:cat {tmp_path}/x.tar.gz", RemoteSettings(timeout=2, retries=0))
    assert local.error == remote.reason == "bad_tar"
    assert "gzip-compressed tar" in local.message and "gzip-compressed tar" in remote.message


def test_a_broken_header_a_misspelt_scheme_a_dead_shard_and_a_compound_pipe(tmp_path, shards, monkeypatch):
    """Found by a review: a remote tar whose header does not parse (a flipped byte, an HTML page served as 200)
    crashed the run (ValueError) where the local reader counts bad_tar; `htps://` was a traceback; a shard
    that could not be opened paid its retries and back-off again on every pass (minutes to hours of silence
    before the run's error checks could fire); a compound pipe command's children outlived the run."""
    import tarfile

    from vlm.data.reader import scan_shard
    from vlm.data.remote import RemoteContext, shard_refs
    from vlm.errors import UserError
    data = bytearray((shards / "shard-000000.tar").read_bytes())
    with tarfile.open(shards / "shard-000000.tar") as tf:
        at = tf.getmembers()[4].offset
    data[at + 148:at + 156] = b"zzzzzzz\0"                                # the checksum field: not octal
    (tmp_path / "hdr.tar").write_bytes(bytes(data))
    local = list(scan_shard(str(tmp_path / "hdr.tar")))
    remote = list(stream_shard(f"pipe:cat {tmp_path}/hdr.tar", RemoteSettings(timeout=2, retries=0)))
    assert local[-1].error == remote[-1].reason == "bad_tar"
    assert [r.key for r in local[:-1]] == [r.key for r in remote[:-1]]
    with pytest.raises(UserError, match="htps://x/a.tar: Protocol not known: htps .a misspelt URL scheme"):
        list(stream_shard("htps://x/a.tar", RemoteSettings(timeout=2, retries=0)))
    import vlm.data.remote as R
    opened = []

    def counting(url, *a, **kw):
        opened.append(url)
        return stream_shard(url, *a, **kw)
    monkeypatch.setattr(R, "stream_shard", counting)
    ctx = RemoteContext(settings=RemoteSettings(timeout=1, retries=2, backoff=0.01))
    for epoch in range(3):                                               # three passes over a failing shard
        [ref] = list(shard_refs("pipe:false", ctx, epoch))
        assert ref.error == REMOTE_ERROR and "`false` exited with 1" in ref.message
    assert opened == ["pipe:false"]                                      # tried (with its retries) on the first only
    marker = tmp_path / "child.pid"
    refs = list(stream_shard(f"pipe:sh -c 'echo $$ > {marker}; exec sleep 60'; cat {shards}/shard-000000.tar",
                             RemoteSettings(timeout=0.5, retries=0)))
    assert refs[-1].reason == REMOTE_ERROR
    child = Path(f"/proc/{int(marker.read_text())}/status")
    time.sleep(0.2)                                                      # gone, or a zombie no one reaped
    assert not child.exists() or "\nState:\tZ" in child.read_text(), child.read_text()
