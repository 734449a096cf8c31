"""Hostile or huge specs (issue 13): each is refused at once with a message and exit 2, never read
for minutes, never a traceback. A timeout fails the test that would hang (/dev/zero, a FIFO)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tunepipe.spec.limits import MAX_DEPTH, MAX_NODES, MAX_SPEC_BYTES

E = "tp_testplugins:Emit"
L = "tp_testplugins:Length"

needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")


def refused(project, *args: str) -> str:
    """Run ``pipeline ARGS``: it must end with exit 2 and a message; the message."""
    result = project.run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.stderr, result.stderr
    return result.stderr


# --- files that are not files -----------------------------------------------------------------------


@needs_dev_zero
@pytest.mark.timeout(20)
def test_dev_zero_as_an_include(project) -> None:
    project.spec(f"include: /dev/zero\nstages:\n  a:\n    uses: {E}\n")
    for verb in ("validate", "run"):
        out = refused(project, verb, "p.yaml")
        assert "p.yaml:1:10: error: the included file '/dev/zero' is a character device, not a regular file" in out
        assert "hint: name a YAML file" in out


@needs_dev_zero
@pytest.mark.timeout(20)
def test_dev_zero_as_an_input(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {L}\n    inputs: {{src: /dev/zero}}\n")
    for verb in ("validate", "run", "status"):
        out = refused(project, verb, "p.yaml")
        assert "p.yaml:4:19: error: input 'src' of stage 'a' reads '/dev/zero', which is a character device, " \
               "not a regular file" in out
        assert "hint: an input must be a file or a folder" in out


@needs_dev_zero
@pytest.mark.timeout(20)
def test_dev_zero_as_the_pipeline_file(project) -> None:
    out = refused(project, "validate", "/dev/zero")
    assert "/dev/zero: error: the pipeline file is a character device, not a regular file" in out


@needs_fifo
@pytest.mark.timeout(20)
def test_a_fifo_as_an_input(project) -> None:
    os.mkfifo(project.root / "pipe")
    project.write("data/ok.txt", "x")
    os.mkfifo(project.root / "data" / "zz.txt")
    project.spec(f"stages:\n  a:\n    uses: {L}\n    inputs: {{src: pipe}}\n"
                 f"  b:\n    uses: {E}\n    inputs: {{src: 'data/*.txt'}}\n")
    for verb in ("validate", "run"):
        out = refused(project, verb, "p.yaml")
        assert "p.yaml:4:19: error: input 'src' of stage 'a' reads 'pipe', which is a named pipe (FIFO)" in out
        assert "p.yaml:7:19: error: input 'src' of stage 'b' reads 'zz.txt' (matched by 'data/*.txt'), which is " \
               "a named pipe (FIFO)" in out


@needs_fifo
@pytest.mark.timeout(20)
def test_a_fifo_as_the_pipeline_file_or_an_include(project) -> None:
    os.mkfifo(project.root / "p.yaml")
    for verb in ("validate", "run"):
        assert "p.yaml: error: the pipeline file is a named pipe (FIFO), not a regular file" in \
            refused(project, verb, "p.yaml")
    os.mkfifo(project.root / "base.yaml")
    project.spec(f"include: base.yaml\nstages:\n  a:\n    uses: {E}\n", name="q.yaml")
    assert "q.yaml:1:10: error: the included file 'base.yaml' is a named pipe (FIFO)" in \
        refused(project, "validate", "q.yaml")


@needs_fifo
@pytest.mark.timeout(20)
def test_an_include_replaced_by_a_fifo_after_a_run_is_not_read(project) -> None:
    """The reuse of a validated spec checks its includes: a FIFO there would block that check."""
    project.write("base.yaml", f"stages:\n  a:\n    uses: {E}\n")
    project.spec("include: base.yaml\n")
    project.ok("run", "p.yaml")
    (project.root / "base.yaml").unlink()
    os.mkfifo(project.root / "base.yaml")
    assert "is a named pipe (FIFO)" in refused(project, "run", "p.yaml")


def test_a_folder_input_is_still_fine(project) -> None:
    project.write("data/a.txt", "a")
    project.spec(f"stages:\n  a:\n    uses: {E}\n    inputs: {{src: data}}\n")
    project.ok("validate", "p.yaml")


# --- files too big, too deep, too many -----------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_spec_over_the_size_limit(project) -> None:
    body = "".join(f"k{i}: {i}\n" for i in range(1_100_000))
    project.spec(f"stages:\n  a:\n    uses: {E}\n" + body)
    assert (project.root / "p.yaml").stat().st_size > MAX_SPEC_BYTES
    for verb in ("validate", "run"):
        out = refused(project, verb, "p.yaml")
        assert "p.yaml: error: the pipeline file is 17.6 MB, more than the 10 MB a pipeline file may have" in out
    project.write("big.yaml", body)
    project.spec(f"include: big.yaml\nstages:\n  a:\n    uses: {E}\n")
    assert "p.yaml:1:10: error: the included file 'big.yaml' is 17.6 MB, more than the 10 MB" in \
        refused(project, "validate", "p.yaml")


@pytest.mark.timeout(20)
def test_a_spec_with_too_many_keys(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\nvars:\n" + "".join(f"  k{i}: {i}\n" for i in range(MAX_NODES)))
    out = refused(project, "validate", "p.yaml")
    assert f"error: the file has more than {MAX_NODES} values (keys, values and list items)" in out


@pytest.mark.timeout(20)
def test_a_billion_laughs(project) -> None:
    lines = ["vars:", "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  {c}: &{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    lines += ["stages:", "  s:", f"    uses: {E}", "    with: {extra: {x: *i}}"]
    project.spec("\n".join(lines) + "\n")
    for verb in ("validate", "run"):
        out = refused(project, verb, "p.yaml")
        assert f"p.yaml:6:22: error: the YAML aliases (*name) expand to more than {MAX_NODES} values" in out


def test_a_few_aliases_are_fine(project) -> None:
    project.spec(f"vars:\n  tags: &t [x, y]\nstages:\n  a:\n    uses: {E}\n    with: {{tags: *t}}\n"
                 f"  b:\n    uses: {E}\n    with: {{tags: *t}}\n")
    project.ok("validate", "p.yaml")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("shape", ["block", "flow-list", "flow-mapping"])
def test_a_thousand_levels_of_nesting(project, shape: str) -> None:
    n = 1000
    if shape == "block":
        nested = "".join("  " * (i + 1) + f"k{i}:\n" for i in range(n))
        project.spec(f"stages:\n  a:\n    uses: {E}\nvars:\n{nested}")
        where = f"p.yaml:{4 + MAX_DEPTH - 1}:{2 * (MAX_DEPTH - 1) + 1}: error: "
    elif shape == "flow-list":
        project.spec(f"stages:\n  a:\n    uses: {E}\nvars:\n  x: {'[' * n}{']' * n}\n")
        where = f"p.yaml:5:{6 + MAX_DEPTH - 2}: error: "  # vars is level 2, the first '[' level 3
    else:
        project.spec(f"stages:\n  a:\n    uses: {E}\nvars:\n  x: {'{a: ' * n}1{'}' * n}\n")
        where = f"p.yaml:5:{6 + 4 * (MAX_DEPTH - 3) + 1}: error: "  # the key of the 98th mapping
    for verb in ("validate", "run"):
        out = refused(project, verb, "p.yaml")
        assert where + f"the YAML nests more than {MAX_DEPTH} levels deep here" in out, out[:300]


@pytest.mark.timeout(20)
def test_aliases_that_nest_too_deep(project) -> None:
    project.spec(f"vars:\n  x: &x {'[' * 60}{']' * 60}\n  y: {'[' * 50}*x{']' * 50}\nstages:\n  a:\n    uses: {E}\n")
    assert f"p.yaml:3:56: error: this alias nests the document more than {MAX_DEPTH} levels deep" in \
        refused(project, "validate", "p.yaml")


def test_nesting_up_to_the_limit_runs(project) -> None:
    """root, stages, a, with, extra: then 95 more levels, and the run keys and records them."""
    d = MAX_DEPTH - 5
    project.spec(f"stages:\n  a:\n    uses: {E}\n    with:\n      extra: {'{a: ' * d}1{'}' * d}\n")
    project.ok("run", "p.yaml")


@pytest.mark.timeout(20)
def test_a_long_chain_of_variables(project) -> None:
    chain = "".join(f"  v{i}: ${{vars.v{i + 1}}}\n" for i in range(1000))
    project.spec(f"vars:\n{chain}  v1000: hi\nstages:\n  a:\n    uses: {E}\n    with: {{text: '${{vars.v0}}'}}\n")
    assert "variables refer to each other more than 50 levels deep" in refused(project, "validate", "p.yaml")


# --- characters YAML does not allow ------------------------------------------------------------------


@pytest.mark.parametrize("char, name", [("\x00", "U+0000 (NUL)"), ("\x1b", "U+001B (ESC)"), ("\x7f", "U+007F (DEL)"),
                                        ("\ufffe", "U+FFFE"), ("\uffff", "U+FFFF")])
def test_control_and_non_characters(project, char: str, name: str) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n    with: {{text: 'a{char}'}}\n")
    out = refused(project, "validate", "p.yaml")
    assert "p.yaml:4:20: error: the file contains " in out and f"{name}, which YAML does not allow" in out
    assert "    4 |     with: {text: 'a\ufffd'}" in out  # shown as a replacement character, not sent to the terminal


def test_many_control_characters_are_counted(project) -> None:
    project.spec(f"stages:\n  a:\n    uses: {E}\n    with: {{text: '{chr(1) * 25}'}}\n")
    out = refused(project, "validate", "p.yaml")
    assert out.startswith("10 problems in the pipeline spec:")
    assert "(and 15 more such characters)" in out


def test_inputs_written_as_a_string(project) -> None:
    project.write("data.jsonl", "{}\n")
    project.spec(f"stages:\n  a:\n    uses: {L}\n    inputs: data.jsonl\n")
    for verb in ("validate", "run"):
        out = refused(project, verb, "p.yaml")
        assert "p.yaml:4:13: error: stage 'a' (inputs) must be a mapping, not a string" in out
        assert "hint: inputs must be a mapping of input names to files or stage outputs, " \
               "e.g. `inputs: {data: data.jsonl}`" in out
        assert "missing its required input" not in out  # one message, not two


def test_limits_are_modest() -> None:
    """The bounds stop hostile files, not pipelines: sarcasm.yaml is far inside them."""
    spec = Path(__file__).parents[2] / "pipelines" / "sarcasm.yaml"
    assert stat.S_ISREG(spec.stat().st_mode) and spec.stat().st_size < MAX_SPEC_BYTES / 1000
    assert MAX_DEPTH >= 50 and MAX_NODES >= 10_000


@pytest.mark.timeout(20)
def test_a_pipe_inside_an_input_folder_is_refused_not_read(tmp_path) -> None:
    """A folder input's content is digested: a FIFO (or a link to /dev/zero) there would block."""
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    os.mkfifo(data / "pipe")
    (data / "zero").symlink_to("/dev/zero")
    (tmp_path / "p.yaml").write_text("name: p\nstages:\n  ingest: {uses: ingest, inputs: {data: data}}\n")
    result = subprocess.run([sys.executable, "-m", "tunepipe", "run", "p.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2, result.stderr
    assert "is not a regular file" in result.stderr and "Traceback" not in result.stderr
