"""Damaged artifacts, end to end: `cache verify --repair` drops every result built from a corrupt
artifact; a cached output that is gone or has other sizes is recomputed, not served; a damaged
stored input fails its stage with the cache's fault and the fix. Real files, real `pipeline` runs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from s3 import s3, s3_server  # noqa: F401  (pytest fixtures)

from tunepipe.cache.remote import RemoteStore
from tunepipe.cache.integrity import downstream, record_inputs
from tunepipe.cache.store import LocalStore

E = "tp_testplugins:Emit"

# a -> b -> c, and d on its own.
CHAIN = f"""
stages:
  a:
    uses: {E}
    inputs: {{src: data/in.txt}}
    with: {{text: "-a"}}
  b:
    uses: {E}
    inputs: {{src: a.out}}
    with: {{text: "-b"}}
  c:
    uses: {E}
    inputs: {{src: b.out}}
    with: {{text: "-c"}}
  d:
    uses: {E}
    with: {{text: solo}}
"""


@pytest.fixture
def chain(project):
    project.write("data/in.txt", "in")
    project.spec(CHAIN)
    project.ok("run", "p.yaml")
    assert project.calls() == ["a", "b", "c", "d"]
    return project


def overwrite(artifact: Path, text: str, name: str = "data.txt") -> None:
    """Edit a published (read-only) file in place, as a user or a stray script might."""
    victim = artifact / name
    victim.chmod(0o644)
    victim.write_text(text)


def text_of(project, stage: str) -> str:
    return (project.artifact(stage) / "data.txt").read_text()


def key_of(project, stage: str) -> str:
    stages = json.loads(project.ok("status", "p.yaml", "--json").stdout)["stages"]
    return next(s["key"] for s in stages if s["stage"] == stage)


# --- cache verify --repair -------------------------------------------------------------------------


def test_repair_drops_every_result_built_from_an_artifact_edited_in_place(chain) -> None:
    keys = {s: key_of(chain, s) for s in "abcd"}
    a = chain.artifact("a")
    overwrite(a, "IN-A")  # same size: no cheap check can see it, only a rehash
    chain.ok("run", "p.yaml")
    assert chain.calls() == []  # the known limit of the cheap check

    result = chain.run("cache", "verify", "p.yaml")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"corrupt: artifact {a.name} no longer matches its digest" in lines
    assert lines[2:5] == [
        f"would drop: stage 'a' result {keys['a'][:16]} (its output {a.name[:12]} is corrupt)",
        f"would drop: stage 'b' result {keys['b'][:16]} (built from corrupt artifact {a.name[:12]})",
        f"would drop: stage 'c' result {keys['c'][:16]} (built from {chain.artifact('b').name[:12]}, "
        "made by stage 'b', which is dropped too)"]
    assert chain.cache.joinpath("keys", keys["c"][:2], f"{keys['c']}.json").exists()  # nothing removed yet

    result = chain.ok("cache", "verify", "p.yaml", "--repair")
    assert [ln.split(" result ")[0] for ln in result.stdout.splitlines() if ln.startswith("dropped:")] == [
        "dropped: stage 'a'", "dropped: stage 'b'", "dropped: stage 'c'"]
    assert result.stdout.endswith("repaired: the next run recomputes the dropped results\n")
    assert not a.exists()
    assert chain.cache.joinpath("keys", keys["d"][:2], f"{keys['d']}.json").exists()  # d read nothing bad

    chain.ok("run", "p.yaml")
    assert chain.calls() == ["a", "b", "c"]
    assert text_of(chain, "c") == "in-a-b-c"
    assert chain.ok("cache", "verify", "p.yaml").stdout.endswith("ok: the cache is consistent\n")


def test_repair_drops_a_result_computed_from_the_edited_artifact(chain) -> None:
    """The reported case: b reran on a's edited file; its result must not outlive the repair."""
    overwrite(chain.artifact("a"), "in-X")
    chain.ok("run", "p.yaml", "--force=b")
    assert chain.calls() == ["b", "c"]
    assert text_of(chain, "c") == "in-X-b-c"

    result = chain.ok("cache", "verify", "p.yaml", "--repair")
    assert "dropped: stage 'b'" in result.stdout and "dropped: stage 'c'" in result.stdout
    chain.ok("run", "p.yaml")
    assert chain.calls() == ["a", "b"]  # c's result from b's correct bytes is still the first run's
    assert (text_of(chain, "b"), text_of(chain, "c")) == ("in-a-b", "in-a-b-c")
    assert chain.ok("cache", "verify", "p.yaml").stdout.endswith("ok: the cache is consistent\n")


# --- a plain run checks cached outputs -------------------------------------------------------------


def test_a_deleted_cached_output_is_recomputed_not_served(chain) -> None:
    a = chain.artifact("a")
    (a / "data.txt").chmod(0o644)
    (a / "data.txt").unlink()
    result = chain.ok("run", "p.yaml", "--explain")
    assert "because its cached output out is damaged (data.txt is gone): recomputing" in result.stderr  # --explain
    assert chain.calls() == ["a"]  # b and c read a's bytes, which are the same again
    assert "1 done, 3 cached" in result.stdout
    assert text_of(chain, "a") == "in-a" and text_of(chain, "c") == "in-a-b-c"
    assert chain.ok("cache", "verify", "p.yaml").stdout.endswith("ok: the cache is consistent\n")


def test_a_truncated_cached_output_is_reported_by_status_and_recomputed(chain) -> None:
    overwrite(chain.artifact("b"), "")
    status = chain.ok("status", "p.yaml").stdout
    assert "stale    its cached output out is damaged (data.txt has 0 bytes, 6 when published): recomputing" in status
    dry = chain.ok("run", "p.yaml", "--dry-run").stdout  # the plan
    assert re.search(r"^  ▶ b +will run: ", dry, re.M), dry
    chain.ok("run", "p.yaml")
    assert chain.calls() == ["b"]
    assert text_of(chain, "b") == "in-a-b" and text_of(chain, "c") == "in-a-b-c"
    assert list((chain.cache / "tmp").iterdir()) == []  # the damaged copy is gone, not left aside
    assert chain.ok("cache", "verify", "p.yaml").stdout.endswith("ok: the cache is consistent\n")


def test_an_added_file_in_a_cached_output_is_damage_too(chain) -> None:
    a = chain.artifact("a")
    a.chmod(0o755)
    (a / "stray.txt").write_text("x")
    assert "its cached output out is damaged (stray.txt was added)" in chain.ok("status", "p.yaml").stdout
    chain.ok("run", "p.yaml")
    assert chain.calls() == ["a"]
    assert sorted(p.name for p in chain.artifact("a").iterdir()) == ["data.txt"]


def test_a_cache_from_before_manifests_is_trusted_by_existence_until_verify_repair(chain) -> None:
    shutil.rmtree(chain.cache / "manifests")
    overwrite(chain.artifact("d"), "s")  # undetectable without a manifest: served as before
    chain.ok("run", "p.yaml")
    assert chain.calls() == []

    result = chain.ok("cache", "verify", "p.yaml", "--repair")  # rehashes; writes the manifests it lacks
    assert "dropped: stage 'd'" in result.stdout
    assert len(list((chain.cache / "manifests").glob("*/*.json"))) == 3  # a, b, c: intact
    chain.ok("run", "p.yaml")
    assert chain.calls() == ["d"]
    overwrite(chain.artifact("c"), "short")
    chain.ok("run", "p.yaml")
    assert chain.calls() == ["c"]


# --- a damaged stored input ------------------------------------------------------------------------

VANDAL = '''
import os
from tunepipe.plugins import Port


class Vandal:
    """Truncates a file of its (stored) input while it runs, when $TP_VANDAL is set."""

    name = "vandal"
    version = "1"
    description = "damages its input"
    params_schema = {"type": "object", "properties": {}}
    inputs = {"src": Port("anything")}
    outputs = {"out": Port("v.txt")}
    packages = ()

    def run(self, ctx, inputs, params):
        if os.environ.get("TP_VANDAL"):
            victim = inputs["src"].files()[0]
            victim.chmod(0o644)
            victim.write_text("")
        (ctx.output("out") / "data.txt").write_text("v")
        return {}
'''

VANDAL_SPEC = f"""
stages:
  a:
    uses: {E}
    inputs: {{src: data/in.txt}}
    with: {{text: "-a"}}
  v:
    uses: tp_vandal_repair:Vandal
    inputs: {{src: a.out}}
  c:
    uses: {E}
    inputs: {{src: [a.out, v.out]}}
    with: {{text: "-c"}}
"""


def test_a_damaged_stored_input_fails_its_stage_with_the_cache_s_fault(project, monkeypatch) -> None:
    project.write("data/in.txt", "in")
    project.write("tp_vandal_repair.py", VANDAL)
    project.spec(VANDAL_SPEC)
    monkeypatch.setenv("TP_VANDAL", "1")
    result = project.run("run", "p.yaml")
    assert result.exit_code == 1
    assert project.calls() == ["a"]  # c's plugin never saw the damaged input
    found = re.search(r"the cache's copy of the input a\.out \(artifact (\w{12})\) is damaged \(data\.txt has 0 "
                      r"bytes, 4 when published\): run `pipeline cache verify --repair`, then run the pipeline again",
                      result.stderr)  # the failed stage's error
    assert found, result.output
    assert [p.name for p in (project.cache / "objects").glob(f"*/{found.group(1)}*")] != []

    monkeypatch.delenv("TP_VANDAL")
    result = project.ok("cache", "verify", "p.yaml", "--repair")
    assert "dropped: stage 'v'" in result.stdout
    project.ok("run", "p.yaml")
    assert project.calls() == ["a", "c"]
    assert (project.artifact("c") / "data.txt").read_text() == "in-av-c"


# --- the pieces ------------------------------------------------------------------------------------


def test_downstream_reads_both_key_formats_and_follows_outputs() -> None:
    bad, mid, out = "b" * 64, "m" * 64, "o" * 64
    records = {
        "k1": {"stage": "one", "parts": {"inputs": {"src": [bad]}}, "outputs": {"out": mid}},  # format 1
        "k2": {"stage": "two", "parts": {"inputs": {"src": [{"name": "one.out", "digest": mid}]}},  # format 2
               "outputs": {"out": out}},
        "k3": {"stage": "three", "parts": {"inputs": {"src": [{"name": "x", "digest": "f" * 64}]}}, "outputs": {}},
        "k4": {"stage": "odd", "parts": {"inputs": {"src": [{"name": "no digest"}], "n": None}}, "outputs": {}},
    }
    assert record_inputs(records["k2"]) == {mid}
    assert record_inputs(records["k4"]) == set()
    assert downstream(records, {bad}) == {"k1": bad, "k2": mid}


def test_publish_replaces_a_damaged_copy_of_the_same_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cache")

    def publish() -> str:
        folder = store.staging("k" * 64)
        (folder / "w.bin").write_bytes(b"weights")
        return store.publish(folder)

    digest = publish()
    assert store.damage(digest) is None
    overwrite(store.object_path(digest), "w", name="w.bin")
    assert store.damage(digest) == "w.bin has 1 bytes, 7 when published"
    assert publish() == digest
    assert (store.object_path(digest) / "w.bin").read_bytes() == b"weights"
    assert store.damage(digest) is None and store.verify().clean


def test_remote_verify_drops_results_built_here_from_a_damaged_mirrored_copy(s3, tmp_path: Path) -> None:  # noqa: F811
    store = RemoteStore(s3.url, tmp_path / "node")
    made: dict[str, str] = {}
    for key, text, reads in (("1" * 64, "upstream", []), ("2" * 64, "downstream", ["1" * 64])):
        folder = store.staging(key)
        (folder / "data.txt").write_text(text)
        made[key] = store.publish(folder)
        inputs = {"src": [{"name": "u.out", "digest": made[k]} for k in reads]}
        store.put_record(key, {"key": key, "stage": text, "parts": {"inputs": inputs}, "outputs": {"out": made[key]}})
    up, down = made["1" * 64], made["2" * 64]
    overwrite(store.object_path(up), "UPSTREAM")  # this machine's copy only; the remote's is fine

    report = store.verify()
    assert report.dropped == [("2" * 64, "downstream", f"built from corrupt artifact {up[:12]}")]
    store.verify(repair=True)
    assert store.record("2" * 64) is None
    assert RemoteStore(s3.url, tmp_path / "other").record("2" * 64) is None  # dropped on the remote too
    assert store.record("1" * 64) is not None  # the remote's copy of its output is intact
    assert (store.fetch(up) / "data.txt").read_text() == "upstream"  # downloaded again
    assert store.fetch(down).is_dir()


def test_remote_fetch_downloads_again_over_a_damaged_mirrored_copy(s3, tmp_path: Path) -> None:  # noqa: F811
    store = RemoteStore(s3.url, tmp_path / "node")
    folder = store.staging("3" * 64)
    (folder / "data.txt").write_text("weights")
    digest = store.publish(folder)
    overwrite(store.object_path(digest), "w")
    assert store.damage(digest) is None  # the remote holds the truth: the damaged copy here is dropped
    assert (store.fetch(digest) / "data.txt").read_text() == "weights"
