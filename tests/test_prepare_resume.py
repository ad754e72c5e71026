"""A prepare job resumes: killed with SIGKILL halfway (real worker processes), a re-run
decodes only the shards without a completion record and ends with the bytes of an
uninterrupted run; the card lists each shard's sha256 and size; the index gives each
member's byte offset."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from manifests.schema import write_manifest
from pipelines.beam.prepare import KILL_AFTER_RECORDS_ENV
from tests.conftest import PYTHON, ROOT, encode_mp3, run_cli, tone

N = 16
# A tiny shard size: about one track per shard, so "half the shards" is well defined.
ARGS = ("--shard-size-mb", "0.05")


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def counters(stdout: str) -> dict[str, int]:
    line = next((x for x in stdout.splitlines() if x.startswith("counters: ")), "counters: ")
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    audio = base / "audio"
    audio.mkdir()
    rows = []
    for i in range(N):
        encode_mp3(tone(200 + 60 * i, 6, 22050, seed=i), 22050, audio / f"t{i}.mp3", "64k")
        rows.append(
            {"key": f"t{i:02d}", "track_id": str(i), "dataset": "resume",
             "split": ("train", "train", "valid", "test")[i % 4],
             "audio_path": f"t{i}.mp3", "tags": ["x"] if i % 2 else ["y"]}
        )  # fmt: skip
    write_manifest(rows, base / "manifest.parquet", metadata={"audio_root": str(audio)})
    reference = base / "reference"
    result = run_cli("beam_runner.py", "prepare", "--manifest", str(base / "manifest.parquet"),
                     "--out", str(reference), *ARGS, "--direct_running_mode=in_memory",
                     "--direct_num_workers=1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return base, reference


def test_card_lists_shard_checksums_and_index_gives_member_offsets(corpus):
    _, reference = corpus
    card = json.loads((reference / "dataset.json").read_text())
    shards = [s for split in card["splits"].values() for s in split["shards"]]
    assert len(shards) >= N // 2
    for s in shards:
        data = (reference / s["name"]).read_bytes()
        assert s["sha256"] == hashlib.sha256(data).hexdigest() and s["bytes"] == len(data)
    assert {"code_version", "versions"} <= set(card["identity"])
    assert card["identity"]["versions"]["numpy"]
    for row in pq.read_table(reference / "index.parquet").to_pylist():
        with tarfile.open(reference / row["shard"]) as tar:
            actual = {i.name: (i.offset_data, i.size) for i in tar}
        assert [m["name"] for m in row["members"]] == sorted(
            n for n in actual if n.startswith(row["key"] + ".")
        )
        data = (reference / row["shard"]).read_bytes()
        for m in row["members"]:
            assert actual[m["name"]] == (m["offset"], m["size"])
            if m["name"].endswith(".json"):
                assert json.loads(data[m["offset"] : m["offset"] + m["size"]])["key"] == row["key"]


def test_shard_tars_are_the_bytes_of_tarfiles_stream_writer():
    """write_tar writes each member in one piece; the bytes must stay those of
    `tarfile.open(mode="w|")` (USTAR, fixed fields), whatever the member sizes: empty,
    block-aligned, one byte over, a name of 100 bytes (the USTAR limit), and no member at all;
    memoryview members (an update's kept tracks) too."""
    import io

    from pipelines.core.shards import member_layout, tar_bytes

    def tarfile_bytes(samples):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in sorted(samples):
                for ext in sorted(members):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(members[ext]), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(bytes(members[ext])))
        return buf.getvalue()

    rng = np.random.default_rng(0)
    sizes = [0, 1, 511, 512, 513, 10240, 10241, 70001]
    samples = [
        (f"k{i:03d}" + "x" * (88 if i == 3 else 0),
         {"json": rng.bytes(size), "mel.npy": memoryview(rng.bytes(sizes[-1 - i]))})
        for i, size in enumerate(sizes)
    ]  # fmt: skip
    for group in ([], samples[:1], samples):
        data = tar_bytes(group)
        assert data == tarfile_bytes(group) and len(data) % tarfile.RECORDSIZE == 0
    for key, entries in member_layout(samples).items():
        for entry in entries:
            want = dict(samples)[key][entry["name"][len(key) + 1 :]]
            assert data[entry["offset"] : entry["offset"] + entry["size"]] == bytes(want)


def test_a_job_killed_halfway_resumes_to_identical_bytes_with_fewer_decodes(corpus, tmp_path):
    base, reference = corpus
    want = len(list((reference / "_progress").glob("*.json")))
    out = tmp_path / "out"
    cmd = [PYTHON, str(ROOT / "beam_runner.py"), "prepare", "--manifest",
           str(base / "manifest.parquet"), "--out", str(out), *ARGS,
           "--direct_running_mode=multi_processing", "--direct_num_workers=2"]  # fmt: skip
    # The job kills its own process group (driver and workers) once half the records
    # exist: a test polling for them was outrun on a busy machine (all written, none lost).
    env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_AFTER_RECORDS_ENV: str(want // 2)}
    job = subprocess.Popen(cmd, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert job.wait(timeout=300) == -signal.SIGKILL, "the job was not killed halfway"
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    done = len(list((out / "_progress").glob("*.json")))
    assert not (out / "dataset.json").exists() and done < want
    resumed = run_cli("beam_runner.py", "prepare", "--manifest", str(base / "manifest.parquet"),
                      "--out", str(out), *ARGS, "--direct_num_workers=2")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    count = counters(resumed.stdout)
    assert count["shards_reused"] >= done > 0
    assert count.get("decoded", 0) + count.get("rejected", 0) <= N - done
    assert tree_bytes(out) == tree_bytes(reference)  # no temporary file left either


def test_a_changed_shard_is_rebuilt_and_the_rest_reused(corpus, tmp_path):
    """A tar damaged after the job (its sha256 no longer matches its record) is rebuilt;
    every other shard is reused."""
    import shutil

    base, reference = corpus
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    victim = sorted(out.glob("train-*.tar"))[0]
    victim.write_bytes(victim.read_bytes()[:-2048] + b"\0" * 2048 + b"x")
    result = run_cli("beam_runner.py", "prepare", "--manifest", str(base / "manifest.parquet"),
                     "--out", str(out), *ARGS, "--direct_running_mode=in_memory")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    count = counters(result.stdout)
    samples = sum(1 for r in pq.read_table(out / "index.parquet").to_pylist()
                  if r["shard"] == victim.name)  # fmt: skip
    assert count["decoded"] == samples and count["shards_written"] == 1
    assert tree_bytes(out) == tree_bytes(reference)


def test_appending_tracks_rebuilds_only_the_shards_they_land_in(corpus, tmp_path):
    import shutil

    base, reference = corpus
    out = tmp_path / "grown"
    shutil.copytree(reference, out)
    audio = Path(json.loads((reference / "dataset.json").read_text())["manifest"]["path"]).parent
    rows = pq.read_table(base / "manifest.parquet").to_pylist()
    for i in (N, N + 1):
        # Tag "y" first: it becomes the most frequent train tag, yet the labels keep their order.
        encode_mp3(tone(1500 + 100 * i, 5, 22050, seed=i), 22050, tmp_path / f"new{i}.mp3", "64k")
        rows.append({**rows[0], "key": f"t{i:02d}", "track_id": str(i), "tags": ["y"],
                     "audio_path": str(tmp_path / f"new{i}.mp3")})  # fmt: skip
    write_manifest(rows, tmp_path / "grown.parquet", metadata={"audio_root": str(audio / "audio")})
    args = ("beam_runner.py", "prepare", "--manifest", str(tmp_path / "grown.parquet"),
            "--out", str(out), *ARGS, "--direct_running_mode=in_memory")  # fmt: skip
    refused = run_cli(*args)
    assert refused.returncode == 2 and "--update" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0
    result = run_cli(*args, "--update")
    assert result.returncode == 0, result.stderr[-3000:]
    count = counters(result.stdout)
    index = {r["key"]: r for r in pq.read_table(out / "index.parquet").to_pylist()}
    assert len(index) == N + 2
    touched = {index[f"t{i:02d}"]["shard"] for i in (N, N + 1)}
    assert count["decoded"] == 2 and count["shards_written"] == len(touched)
    assert "reused" in result.stdout and "rebuilt" in result.stdout
    before = tree_bytes(reference)
    after = tree_bytes(out)
    for name, data in before.items():
        if name.endswith(".tar") and name not in touched:
            assert after[name] == data, name  # untouched shards: not rewritten
    # Tracks of a rebuilt shard kept their exact bytes (cut from the old tar).
    old_index = {r["key"]: r for r in pq.read_table(reference / "index.parquet").to_pylist()}
    for key, row in index.items():
        if row["shard"] in touched and key in old_index:
            old_data, new_data = before[row["shard"]], after[row["shard"]]
            for m_old, m_new in zip(old_index[key]["members"], row["members"]):
                a = old_data[m_old["offset"] : m_old["offset"] + m_old["size"]]
                assert a == new_data[m_new["offset"] : m_new["offset"] + m_new["size"]]
    # The same command again without --update: its label order was kept, so a plain
    # re-run would relabel the dataset; one line says to pass --update again.
    again = run_cli(*args)
    assert again.returncode == 2 and "last written by --update" in again.stderr
    assert again.stderr.strip().count("\n") == 0
    # The same update left to the default runner settings runs on two threads of the
    # driver's process (two tracks are too few to repay worker processes): same bytes.
    threaded = tmp_path / "grown-threads"
    shutil.copytree(reference, threaded)
    args = [a if a != str(out) else str(threaded) for a in args[:-1]]
    result = run_cli(*args, "--update", "--direct_num_workers=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(touched) == 2 and "on 2 threads of this process" in result.stdout
    assert tree_bytes(threaded) == after
    card = json.loads((out / "dataset.json").read_text())
    assert card["counts"]["samples"] == N + 2
    assert card["vocabulary"] == json.loads((reference / "dataset.json").read_text())["vocabulary"]
    assert (
        card["job"]["planned_shards"]
        == json.loads((reference / "dataset.json").read_text())["job"]["planned_shards"]
    )


def run_in_process(monkeypatch, *argv: str) -> list[tuple]:
    """`beam_runner.py prepare ...` in this process, with the pipeline's entry watched:
    returns (shards given to the pipeline, runner options) for each pipeline run."""
    import beam_runner
    from pipelines.beam import prepare_cli

    runs, real = [], prepare_cli.run_pipeline

    def watched(cfg, work, options, runner, quiet):
        runs.append((list(work.build), options.get_all_options()))
        return real(cfg, work, options, runner, quiet)

    monkeypatch.setattr(prepare_cli, "run_pipeline", watched)
    assert beam_runner._run(["prepare", *argv]) == 0
    return runs


def test_a_finished_dataset_reruns_without_a_pipeline(corpus, tmp_path, monkeypatch, capsys):
    """Every record matches and every tar is intact: the driver plans nothing to build,
    runs no pipeline (no worker process), and rewrites the same files."""
    import shutil

    base, reference = corpus
    out = tmp_path / "again"
    shutil.copytree(reference, out)
    runs = run_in_process(monkeypatch, "--manifest", str(base / "manifest.parquet"),
                          "--out", str(out), *ARGS, "--direct_num_workers=2")  # fmt: skip
    stdout = capsys.readouterr().out
    assert runs == [] and "nothing to build" in stdout
    shards = len(list((reference / "_progress").glob("*.json")))
    assert counters(stdout) == {"shards_reused": shards, "tracks_reused": N}
    assert tree_bytes(out) == tree_bytes(reference)


def test_a_one_shard_update_builds_that_shard_in_this_process(
    corpus, tmp_path, monkeypatch, capsys
):
    """One track appended: the pipeline gets exactly the shard it lands in, and runs it
    in this process (in_memory) though two workers were asked for; one decode."""
    import shutil

    from pipelines.core.shards import shard_index

    base, reference = corpus
    out = tmp_path / "plus-one"
    shutil.copytree(reference, out)
    rows = pq.read_table(base / "manifest.parquet").to_pylist()
    encode_mp3(tone(2900, 5, 22050, seed=99), 22050, tmp_path / "new.mp3", "64k")
    rows.append(
        {**rows[0], "key": "t99", "track_id": "99", "audio_path": str(tmp_path / "new.mp3")}
    )
    audio = base / "audio"
    write_manifest(rows, tmp_path / "plus.parquet", metadata={"audio_root": str(audio)})
    runs = run_in_process(monkeypatch, "--manifest", str(tmp_path / "plus.parquet"),
                          "--out", str(out), *ARGS, "--update", "--direct_num_workers=2")  # fmt: skip
    planned = json.loads((reference / "dataset.json").read_text())["job"]["planned_shards"]
    shard = (rows[0]["split"], shard_index("t99", planned[rows[0]["split"]]))
    assert len(runs) == 1 and runs[0][0] == [shard]
    assert runs[0][1]["direct_running_mode"] == "in_memory"
    count = counters(capsys.readouterr().out)
    assert count["decoded"] == 1 and count["shards_written"] == 1
    before, after = tree_bytes(reference), tree_bytes(out)
    touched = f"{shard[0]}-{shard[1]:06d}.tar"
    assert after[touched] != before[touched]
    assert all(after[n] == d for n, d in before.items() if n.endswith(".tar") and n != touched)


def test_local_workers_never_outnumber_the_shards_to_build():
    from pipelines.beam.runner_options import local_worker_args

    two = ["--direct_num_workers=2"]
    assert local_worker_args(two, 5, 500) == ["--direct_num_workers=2"]
    assert local_worker_args(two, 1, 500) == [
        "--direct_running_mode=in_memory", "--direct_num_workers=1"]  # fmt: skip
    # A small job: threads of this process, one per worker asked for (no process start-up).
    assert local_worker_args(two, 5, 20) == [
        "--direct_running_mode=multi_threading", "--direct_num_workers=2"]  # fmt: skip
    four = ["--direct_num_workers=4"]
    assert local_worker_args(four, 3, 150) == [
        "--direct_running_mode=multi_threading", "--direct_num_workers=3"]  # fmt: skip
    assert local_worker_args(four, 3, 200) == ["--direct_num_workers=3"]  # 120 * 3 / 2 = 180
    explicit = ["--direct_running_mode=multi_processing", "--direct_num_workers=4"]
    assert local_worker_args(explicit, 3, 20) == [explicit[0], "--direct_num_workers=3"]
    remote = ["--runner=DataflowRunner", "--direct_num_workers=4"]
    assert local_worker_args(remote, 1, 1) == remote


def test_a_verified_tar_is_hashed_again_only_when_it_changed(corpus, tmp_path, monkeypatch, capsys):
    """The plan's stat cache: a re-run reads no tar whose stat is what it was when its
    sha256 was verified; a tar changed in place, even with its size and mtime put back,
    is hashed again and rebuilt (its ctime moved)."""
    import shutil

    from pipelines.beam import verified_tars
    from pipelines.core import storage

    base, reference = corpus
    out = tmp_path / "cached"
    shutil.copytree(reference, out)
    monkeypatch.setattr(verified_tars, "RACY_NS", 0)  # the copy is fresh; see the next test
    hashed = []
    real = storage.file_sha256
    monkeypatch.setattr(storage, "file_sha256", lambda p, n=None: hashed.append(p) or real(p, n))
    argv = ("--manifest", str(base / "manifest.parquet"), "--out", str(out), *ARGS)
    tars = sorted(out.glob("*.tar"))
    assert run_in_process(monkeypatch, *argv) == [] and len(hashed) == len(tars)
    hashed.clear()
    assert run_in_process(monkeypatch, *argv) == [] and hashed == []
    victim = tars[len(tars) // 2]
    before = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1  # the tar's zero padding: a change of the same size
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (
        victim.stat().st_size == before.st_size and victim.stat().st_mtime_ns == before.st_mtime_ns
    )
    runs = run_in_process(monkeypatch, *argv)
    assert [str(p) for p in hashed] == [str(victim)]
    assert len(runs) == 1 and len(runs[0][0]) == 1
    capsys.readouterr()
    assert tree_bytes(out) == tree_bytes(reference)


def test_a_tar_written_within_the_racy_window_is_not_entered(tmp_path):
    """A tar whose ctime is less than RACY_NS old could still change without moving its
    times (timestamp granularity): it is not entered, even with its mtime set back."""
    from pipelines.beam.verified_tars import VerifiedTars

    tar = tmp_path / "train-000000.tar"
    tar.write_bytes(b"x" * 1024)
    os.utime(tar, ns=(0, 0))  # an old mtime; the ctime is now
    verified = VerifiedTars(str(tmp_path))
    verified.add(tar.name, "ab" * 32, 1024)
    assert verified.entries == {}
    verified.add(tar.name, "ab" * 32, 1024)
    verified.save({tar.name})
    assert not VerifiedTars(str(tmp_path)).known(tar.name, "ab" * 32)


def test_the_driver_keeps_of_each_record_only_what_the_finish_step_reads(
    corpus, tmp_path, monkeypatch
):
    """Reused and rebuilt shards alike: the per-track parts of a record (`rows`, most of
    its bytes, and `sums_file`, which describes the per-track mel sums' sidecar: what an
    update's workers read) are not held by the driver until the card is written."""
    import shutil

    from pipelines.beam import prepare_cli

    base, reference = corpus
    out = tmp_path / "changed"
    shutil.copytree(reference, out)
    rows = pq.read_table(base / "manifest.parquet").to_pylist()
    rows[0]["tags"] = ["x", "y"]
    audio = base / "audio"
    write_manifest(rows, tmp_path / "changed.parquet", metadata={"audio_root": str(audio)})
    held, real = [], prepare_cli.finish
    monkeypatch.setattr(prepare_cli, "finish", lambda cfg, records: (held.append(records),
                        real(cfg, records))[1])  # fmt: skip
    runs = run_in_process(monkeypatch, "--manifest", str(tmp_path / "changed.parquet"),
                          "--out", str(out), *ARGS, "--update")  # fmt: skip
    (records,) = held
    assert len(runs) == 1 and 0 < len(runs[0][0]) < len(records)
    on_disk = [json.loads(p.read_text()) for p in (out / "_progress").glob("train-*.json")]
    assert on_disk and all(r["rows"] and r["sums_file"] for r in on_disk)
    assert all("rows" not in r and "sums_file" not in r for r in records.values())
    assert all(r["index"] is not None and "fingerprint" in r for r in records.values())


def fullest_train_shard(reference: Path) -> tuple[str, list[str]]:
    """The train shard holding the most tracks, and their keys."""
    by_shard: dict[str, list[str]] = {}
    for row in pq.read_table(reference / "index.parquet").to_pylist():
        if row["split"] == "train":
            by_shard.setdefault(row["shard"], []).append(row["key"])
    name, keys = max(by_shard.items(), key=lambda item: (len(item[1]), item[0]))
    return name, sorted(keys)


def updated_copy(reference: Path, manifest: Path, out: Path, before_update=None):
    """A copy of `reference`, `before_update(out)` done to it, then updated to `manifest`:
    (its counters, its stderr)."""
    import shutil

    shutil.copytree(reference, out)
    if before_update is not None:
        before_update(out)
    result = run_cli("beam_runner.py", "prepare", "--manifest", str(manifest), "--out", str(out),
                     *ARGS, "--update", "--direct_running_mode=in_memory")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return counters(result.stdout), result.stderr


@pytest.fixture(scope="module")
def retagged(corpus, tmp_path_factory):
    """One track of the fullest train shard retagged, and the update of an untouched copy
    of the reference to it (what the other sums tests must end with): (manifest, shard
    name, the shard's keys, the updated output)."""
    base, reference = corpus
    tmp = tmp_path_factory.mktemp("retagged")
    shard, keys = fullest_train_shard(reference)
    rows = pq.read_table(base / "manifest.parquet").to_pylist()
    for row in rows:
        if row["key"] == keys[0]:
            row["tags"] = ["x", "y"]
    manifest = tmp / "retagged.parquet"
    write_manifest(rows, manifest, metadata={"audio_root": str(base / "audio")})
    count, _ = updated_copy(reference, manifest, tmp / "plain")
    # The shard's other tracks were kept with their sums from the sidecar, not decoded.
    assert len(keys) >= 2 and count["decoded"] == 1 and "sums_unreadable" not in count
    return manifest, shard, keys, tmp / "plain"


def sidecar_of(out: Path, shard: str) -> Path:
    return out / "_progress" / shard.replace(".tar", ".sums.npy")


def to_previous_version(out: Path) -> None:
    """Every train record rewritten as the previous version wrote it: the per-track sums
    inline (base64), no sidecar."""
    from types import SimpleNamespace

    from pipelines.beam import progress
    from tests.test_progress_sums import inline_sums

    for path in (out / "_progress").glob("train-*.json"):
        split, index = path.stem.split("-")
        record = json.loads(path.read_text())
        sums = progress.read_sums(str(out), split, int(index), record)
        assert sums is not None
        encoded = {
            key: inline_sums(SimpleNamespace(mel_sum=s, mel_sumsq=q, mel_frames=f))
            for key, (s, q, f) in sums.items()
        }
        record = {**{k: v for k, v in record.items() if k != "sums_file"}, "sums": encoded}
        progress.write_record(str(out), split, int(index), record)
        (out / "_progress" / f"{path.stem}.sums.npy").unlink()


def test_an_update_keeps_the_tracks_of_records_of_the_previous_version(corpus, retagged, tmp_path):
    """Records with the sums inline (the previous version's) are still read: the update
    decodes only the retagged track and writes what it writes over new records (the
    rebuilt shard's record in the new format, with its sidecar)."""
    _, reference = corpus
    manifest, shard, _, plain = retagged
    count, _ = updated_copy(reference, manifest, tmp_path / "old", to_previous_version)
    assert count["decoded"] == 1 and "sums_unreadable" not in count
    got, want = tree_bytes(tmp_path / "old"), tree_bytes(plain)
    rebuilt = {f"_progress/{shard[:-4]}.json", f"_progress/{shard[:-4]}.sums.npy"}
    for name, data in want.items():
        if not name.startswith("_progress/") or name in rebuilt:
            assert got[name] == data, name  # the card's mel statistics included


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [Path.unlink, flip_a_bit], ids=["missing", "damaged"])
def test_a_lost_sidecar_makes_the_update_decode_its_shard_again(corpus, retagged, tmp_path, damage):
    """Without trustworthy sums a shard's unchanged tracks are decoded again, not kept:
    nothing is lost, the files are those of the update that kept them, and the count
    and a one-line note say so."""
    _, reference = corpus
    manifest, shard, keys, plain = retagged
    count, stderr = updated_copy(reference, manifest, tmp_path / "out",
                                 lambda out: damage(sidecar_of(out, shard)))  # fmt: skip
    assert count["decoded"] == len(keys) and count["sums_unreadable"] == len(keys)
    notes = [line for line in stderr.splitlines() if "decoded again" in line]
    assert len(notes) == 1 and shard in notes[0], stderr[-3000:]
    assert tree_bytes(tmp_path / "out") == tree_bytes(plain)


def test_a_smaller_layout_removes_the_earlier_shards_records_and_sums(tmp_path):
    """`remove_stale` after a job whose layout has fewer shards: the shards, completion
    records and mel-sums sidecars past it go, this layout's stay."""
    from types import SimpleNamespace

    from pipelines.beam.prepare_cli import remove_stale

    progress = tmp_path / "_progress"
    progress.mkdir()
    for i in range(4):
        (tmp_path / f"train-{i:06d}.tar").write_bytes(b"t")
        (progress / f"train-{i:06d}.json").write_text("{}")
        (progress / f"train-{i:06d}.sums.npy").write_bytes(b"s")
    card = {"splits": {"train": {"shards": [{"name": f"train-{i:06d}.tar"} for i in range(2)]}}}
    (tmp_path / "dataset.json").write_text(json.dumps(card))
    remove_stale(SimpleNamespace(output=str(tmp_path), num_shards={"train": 2}))
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    kept = [f"train-{i:06d}" for i in range(2)]
    assert left == sorted(
        ["dataset.json"]
        + [f"{k}.tar" for k in kept]
        + [f"_progress/{k}{ext}" for k in kept for ext in (".json", ".sums.npy")]
    )
