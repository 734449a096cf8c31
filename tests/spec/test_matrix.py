"""``matrix``: expansion and naming, fan-out alongside, collecting and selecting branches, the cache
per branch (through real runs), the graph views, and the mistakes."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from tunepipe.errors import SpecError
from tunepipe.registry import Registry
from tunepipe.spec import Pipeline, load_pipeline
from tunepipe.spec.expand import label

E = "tp_testplugins:Emit"
L = "tp_testplugins:Length"


def load(root: Path, text: str, overrides: tuple[str, ...] = ()) -> Pipeline:
    (root / "p.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return load_pipeline(root / "p.yaml", Registry(search_paths=[root]), overrides, display="p.yaml")


def errors(root: Path, text: str) -> str:
    with pytest.raises(SpecError) as e:
        load(root, text)
    return str(e.value)


SWEEP = f"""
stages:
  prep:
    uses: {E}
    with: {{text: data}}
  train:
    uses: {E}
    matrix:
      lr: [1.0e-4, 2.0e-4, 5.0e-4]
    inputs: {{src: prep.out}}
    with: {{text: "lr=${{matrix.lr}};"}}
  evaluate:
    uses: {L}
    inputs: {{src: train.out}}
  compare:
    uses: {E}
    inputs: {{src: evaluate@*.out}}
    with: {{text: ""}}
"""


def test_labels_are_readable_and_stay_valid_names() -> None:
    assert [label(v) for v in (1.0e-4, 5e-5, 3, -2, True, None, "q_proj", "data/a b.jsonl", "", [1], {"a": 1})] == [
        "0.0001", "5e-05", "3", "-2", "true", "null", "q_proj", "data_a_b.jsonl", None, None, None]


def test_a_matrix_stage_expands_into_named_branches_and_downstream_fans_out(tmp_path: Path) -> None:
    p = load(tmp_path, SWEEP)
    assert list(p.stages) == ["prep", "train@lr=0.0001", "train@lr=0.0002", "train@lr=0.0005",
                              "evaluate@lr=0.0001", "evaluate@lr=0.0002", "evaluate@lr=0.0005", "compare"]
    assert p.stages["train@lr=0.0002"].params["text"] == "lr=0.0002;"
    assert p.stages["train@lr=0.0002"].group == "train" and p.stages["train@lr=0.0002"].matrix == {"lr": "0.0002"}
    assert p.stages["evaluate@lr=0.0005"].upstream() == ["train@lr=0.0005"]
    assert p.stages["evaluate@lr=0.0005"].group == "evaluate"
    assert [r.text for r in p.stages["compare"].inputs["src"]] == [
        "evaluate@lr=0.0001.out", "evaluate@lr=0.0002.out", "evaluate@lr=0.0005.out"]
    assert p.stages["compare"].group == "" and p.groups() == {
        "train": ["train@lr=0.0001", "train@lr=0.0002", "train@lr=0.0005"],
        "evaluate": ["evaluate@lr=0.0001", "evaluate@lr=0.0002", "evaluate@lr=0.0005"]}
    assert p.expand_names(["train", "prep"]) == ["train@lr=0.0001", "train@lr=0.0002", "train@lr=0.0005", "prep"]


def test_a_grid_is_the_product_in_key_order(tmp_path: Path) -> None:
    p = load(tmp_path, f"""
        stages:
          t:
            uses: {E}
            matrix: {{lr: [0.1, 0.2], epochs: [1, 2, 3], mode: [plain, fancy]}}
            with: {{text: "lr=${{matrix.lr}}", repeat: "${{matrix.epochs}}", mode: "${{matrix.mode}}"}}
    """)
    assert len(p.stages) == 12
    assert list(p.stages)[:3] == ["t@lr=0.1,epochs=1,mode=plain", "t@lr=0.1,epochs=1,mode=fancy",
                                  "t@lr=0.1,epochs=2,mode=plain"]
    assert p.stages["t@lr=0.2,epochs=3,mode=fancy"].params | {} == {
        **p.stages["t@lr=0.2,epochs=3,mode=fancy"].params, "text": "lr=0.2", "repeat": 3, "mode": "fancy"}


def test_named_values_label_their_branches(tmp_path: Path) -> None:
    p = load(tmp_path, f"""
        stages:
          t:
            uses: {E}
            matrix:
              size: {{small: {{r: 8, words: [a]}}, large: {{r: 64, words: [b, c]}}}}
            with: {{repeat: "${{matrix.size.r}}", tags: "${{matrix.size.words}}", text: "r${{matrix.size.r}}"}}
    """)
    assert list(p.stages) == ["t@size=small", "t@size=large"]
    assert p.stages["t@size=large"].params["repeat"] == 64 and p.stages["t@size=large"].params["tags"] == ["b", "c"]
    assert p.stages["t@size=small"].params["text"] == "r8"


def test_values_without_a_label_are_numbered(tmp_path: Path) -> None:
    p = load(tmp_path, f"""
        stages:
          t:
            uses: {E}
            matrix: {{tags: [[a], [b, c]], name: ["a/b", "a b"]}}
            with: {{tags: "${{matrix.tags}}", text: "${{matrix.name}}"}}
    """)
    assert list(p.stages) == ["t@tags=0,name=0", "t@tags=0,name=1", "t@tags=1,name=0", "t@tags=1,name=1"]


def test_matrix_values_from_vars_and_the_command_line(tmp_path: Path) -> None:
    spec = f"""
        vars: {{rates: [1, 2]}}
        stages:
          t: {{uses: {E}, matrix: {{n: "${{vars.rates}}"}}, with: {{repeat: "${{matrix.n}}"}}}}
    """
    assert list(load(tmp_path, spec).stages) == ["t@n=1", "t@n=2"]
    assert list(load(tmp_path, spec, ("vars.rates=[2, 3, 4]",)).stages) == ["t@n=2", "t@n=3", "t@n=4"]
    assert [s.params["repeat"] for s in load(tmp_path, spec, ("t.repeat=9",)).stages.values()] == [9, 9]


def test_branches_of_several_matrix_stages_join_on_shared_keys(tmp_path: Path) -> None:
    p = load(tmp_path, f"""
        stages:
          data:
            uses: {E}
            matrix: {{lang: [en, de]}}
            with: {{text: "${{matrix.lang}}"}}
          train:
            uses: {E}
            matrix: {{lr: [1, 2, 3]}}
            inputs: {{src: data.out}}
            with: {{repeat: "${{matrix.lr}}"}}
          baseline:
            uses: {E}
            matrix: {{lang: [en, de]}}
            with: {{text: "base ${{matrix.lang}}"}}
          evaluate:
            uses: {E}
            inputs: {{src: [train.out, baseline.out]}}
          pick:
            uses: {E}
            inputs: {{src: "train@lr=2.out"}}
    """)
    train = [n for n in p.stages if n.startswith("train@")]
    assert train == ["train@lang=en,lr=1", "train@lang=en,lr=2", "train@lang=en,lr=3",
                     "train@lang=de,lr=1", "train@lang=de,lr=2", "train@lang=de,lr=3"]
    assert p.stages["train@lang=de,lr=2"].upstream() == ["data@lang=de"]
    evaluate = [n for n in p.stages if n.startswith("evaluate@")]
    assert len(evaluate) == 6  # joined on lang: each train branch with the baseline of its language
    assert p.stages["evaluate@lang=de,lr=3"].upstream() == ["train@lang=de,lr=3", "baseline@lang=de"]
    assert p.stages["pick"].upstream() == ["train@lang=en,lr=2", "train@lang=de,lr=2"]  # a selection


def test_an_exact_branch_reads_as_one_reference(tmp_path: Path) -> None:
    p = load(tmp_path, SWEEP + f"  best:\n    uses: {L}\n    inputs: {{src: \"train@lr=0.0002.out\"}}\n")
    assert [r.text for r in p.stages["best"].inputs["src"]] == ["train@lr=0.0002.out"]
    assert p.stages["best"].upstream() == ["train@lr=0.0002"]


BAD = [
    ("empty-list", f"  t: {{uses: {E}, matrix: {{n: []}}, with: {{repeat: '${{matrix.n}}'}}}}\n",
     "p.yaml:2:46: error: matrix key 'n' of stage 't' has no values", "give at least one value"),
    ("duplicate-value", f"  t: {{uses: {E}, matrix: {{n: [1, 2, 1]}}, with: {{repeat: '${{matrix.n}}'}}}}\n",
     "p.yaml:2:53: error: matrix key 'n' of stage 't' lists the value 1 twice (items 1 and 3)", "remove one"),
    ("unused-key", f"  t: {{uses: {E}, matrix: {{n: [1, 2]}}}}\n",
     "p.yaml:2:43: error: matrix key 'n' of stage 't' is not used", "use ${matrix.n}"),
    ("not-a-list", f"  t: {{uses: {E}, matrix: {{n: 3}}, with: {{repeat: '${{matrix.n}}'}}}}\n",
     "p.yaml:2:46: error: stage 't' (matrix.n) must be a list or a mapping or a string, not an integer (3)", ""),
    ("var-not-a-list", f"  t: {{uses: {E}, matrix: {{n: '${{vars.one}}'}}, with: {{repeat: '${{matrix.n}}'}}}}\n",
     "p.yaml:2:46: error: matrix key 'n' of stage 't' must be a list of values or a mapping of named values, not "
     "an integer (1)", "${vars.NAME} naming such a list"),
    ("unknown-key",
     f"  t: {{uses: {E}, matrix: {{n: [1]}}, with: {{repeat: '${{matrix.n}}', text: '${{matrix.m}}'}}}}\n",
     "p.yaml:2:88: error: '${matrix.m}': the matrix of stage 't' has no key 'm'", "keys: n"),
    ("bad-branch-name", f"  t: {{uses: {E}, matrix: {{n: {{'a b': 1}}}}, with: {{repeat: '${{matrix.n}}'}}}}\n",
     "p.yaml:2:47: error: 'a b' cannot name a branch of stage 't' (matrix key 'n')", "letters, digits and _.+-"),
    ("too-many", f"  t: {{uses: {E}, matrix: {{a: {list(range(40))}, b: {list(range(30))}}}, "
                 f"with: {{repeat: '${{matrix.a}}', text: '${{matrix.b}}'}}}}\n",
     "p.yaml:2:34: error: the matrix of stage 't' makes 1200 branches (at most 1000)", "smaller sweeps"),
    ("matrix-on-no-branch", f"  t: {{uses: {E}, with: {{text: '${{matrix.n}}'}}}}\n",
     "p.yaml:2:47: error: '${matrix.n}' is used where there is no matrix", ""),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_matrix_mistakes(project, case) -> None:
    _, stage, message, hint = case
    project.spec("vars: {one: 1}\nstages:\n".replace("vars: {one: 1}\n", "") + stage if "vars" not in stage
                 else "stages:\n" + stage + "vars: {one: 1}\n")
    for verb in ("validate", "run"):
        result = project.run(verb, "p.yaml")
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert message in result.stderr, result.stderr
        assert hint in result.stderr


def test_reading_branches_mistakes(project) -> None:
    project.spec(SWEEP + f"""
  one:
    uses: {L}
    inputs: {{src: evaluate@*.out}}
  none:
    uses: {E}
    inputs: {{src: "train@lr=9.out"}}
  bad:
    uses: {E}
    inputs: {{src: "trian@*.out"}}
  sel:
    uses: {E}
    inputs: {{src: "train@lr.out"}}
""")
    out = project.run("validate", "p.yaml").stderr
    assert "p.yaml:22:19: error: input 'src' of stage 'one' takes one reference, not 3" in out
    assert "it reads several branches of a matrix stage" in out
    assert ("p.yaml:25:19: error: input 'src' of stage 'none' reads 'train@lr=9.out', but no branch of stage 'train'"
            " matches 'lr=9'") in out
    assert "branches: train@lr=0.0001, train@lr=0.0002, train@lr=0.0005" in out
    assert "p.yaml:28:19: error: input 'src' of stage 'bad' reads 'trian@*.out': there is no stage 'trian'" in out
    assert "did you mean 'train'?" in out
    assert "p.yaml:31:19: error: input 'src' of stage 'sel': 'lr' in 'train@lr.out' is not a branch selector" in out


def test_a_problem_shared_by_all_branches_is_reported_once_under_the_stage_s_name(project) -> None:
    project.spec(SWEEP.replace('with: {text: "lr=${matrix.lr};"}', 'with: {text: "lr=${matrix.lr};", txt: 1}'))
    out = project.run("validate", "p.yaml").stderr
    assert out.count("unknown parameter 'txt'") == 1
    assert "p.yaml:11:38: error: unknown parameter 'txt' in stage 'train' (plugin tp_testplugins:Emit)" in out


def test_a_bad_value_points_at_the_matrix_value(project) -> None:
    project.spec(f"stages:\n  t:\n    uses: {E}\n    matrix: {{n: [1, 0, 2]}}\n    with: {{repeat: '${{matrix.n}}'}}\n")
    out = project.run("validate", "p.yaml").stderr
    assert "p.yaml:4:21: error: stage 't' (plugin tp_testplugins:Emit) parameter 'repeat'" in out
    assert "0 is less than the minimum of 1" in out


# --- real runs: each branch is cached on its own --------------------------------------------------


def test_changing_one_value_reruns_only_its_branch(project) -> None:
    project.spec(SWEEP)
    project.ok("run", "p.yaml")
    assert sorted(project.calls()) == sorted(["prep", "train@lr=0.0001", "train@lr=0.0002", "train@lr=0.0005",
                                              "evaluate@lr=0.0001", "evaluate@lr=0.0002", "evaluate@lr=0.0005",
                                              "compare"])
    project.ok("run", "p.yaml")
    assert project.calls() == []
    project.spec(SWEEP.replace("5.0e-4", "1.0e-3"))
    result = project.ok("run", "p.yaml", "--explain")
    assert project.calls() == ["train@lr=0.001", "evaluate@lr=0.001", "compare"]
    assert re.search(r"train@lr=0.0001 +cached", result.stdout)
    assert "because input src (evaluate@lr=0.0001.out, evaluate@lr=0.0002.out, evaluate@lr=0.001.out) changed" \
           in result.stderr
    compare = (project.artifact("compare") / "data.txt").read_text()
    assert compare == "".join(str(len(f"datalr={x};")) for x in ("0.0001", "0.0002", "0.001"))
    # every earlier result is still in the cache, the collector's too: going back reruns nothing
    project.spec(SWEEP)
    project.ok("run", "p.yaml")
    assert project.calls() == []


def test_status_dag_and_selection_show_each_branch(project) -> None:
    project.spec(SWEEP)
    project.ok("run", "p.yaml", "train")
    assert sorted(project.calls()) == ["prep", "train@lr=0.0001", "train@lr=0.0002", "train@lr=0.0005"]
    status = project.ok("status", "p.yaml").stdout.splitlines()
    assert status[1].split() == ["train@lr=0.0001", "fresh"]
    assert status[4].split()[:2] == ["evaluate@lr=0.0001", "stale"]
    data = json.loads(project.ok("status", "p.yaml", "evaluate", "--json").stdout)
    assert [s["stage"] for s in data["stages"]][-3:] == ["evaluate@lr=0.0001", "evaluate@lr=0.0002",
                                                          "evaluate@lr=0.0005"]
    project.ok("run", "p.yaml", "--force=train", "-q")
    assert sorted(project.calls()) == ["compare", "evaluate@lr=0.0001", "evaluate@lr=0.0002", "evaluate@lr=0.0005",
                                       "train@lr=0.0001", "train@lr=0.0002", "train@lr=0.0005"]
    shown = project.run("show", "p.yaml", "train")
    assert shown.exit_code == 2 and "'train' is a matrix stage with 3 branches: name one of train@lr=0.0001" \
        in shown.stderr
    assert json.loads(project.ok("show", "p.yaml", "train@lr=0.0001", "--json").stdout)["current"] is True
    text = project.ok("dag", "p.yaml").stdout
    assert "evaluate@lr=0.0002  [tp_testplugins:Length]  <- train@lr=0.0002.out -> src" in text
    dot = project.ok("dag", "p.yaml", "--dot").stdout
    assert '  subgraph "cluster_0" {\n    label="train (matrix: lr; 3 branches)";\n' in dot
    assert '"train@lr=0.0001" -> "evaluate@lr=0.0001" [label="out->src"];' in dot
    mermaid = project.ok("dag", "p.yaml", "--mermaid").stdout.splitlines()
    assert '  subgraph g1["evaluate (matrix: lr; 3 branches)"]' in mermaid
    assert mermaid.count("  end") == 2


def test_the_run_record_and_logs_name_each_branch(project) -> None:
    project.spec(SWEEP)
    project.ok("run", "p.yaml")
    (record,) = (project.cache / "runs").glob("*/*.json")
    stages = json.loads(record.read_text())["stages"]
    assert stages["train@lr=0.0002"]["status"] == "done"
    assert (record.parent / record.stem / "train@lr=0.0002.log").is_file()
