"""Stage-run keys and the human reasons why two keys differ."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tunepipe.cache.keys import (KEY_FORMAT, diff, input_digests, key_parts, operational_changes, split_operational,
                                 stage_key)

D1 = "a" * 64
D2 = "b" * 64
D3 = "c" * 64


def parts(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        plugin="train",
        identity="tp_plugins.train:Train",
        version="1.0",
        code="f" * 64,
        params={"lr": 0.1, "optim": {"name": "adam", "betas": [0.9, 0.999]}, "epochs": 3},
        inputs={"data": [D1], "extra": [D2, D3]},
        outputs=["model", "metrics"],
        env={"numpy": "1.26.0", "torch": "2.2.0"},
    )
    args.update(over)
    args["inputs"] = {k: [(f"{k}.jsonl", d) if isinstance(d, str) else d for d in v]  # digests: a default name
                      for k, v in args["inputs"].items()}
    return key_parts(**args)


# stage_key ---------------------------------------------------------------------------------

def test_key_parts_shape() -> None:
    p = parts()
    assert p["format"] == KEY_FORMAT
    assert p["plugin"] == {"name": "train", "identity": "tp_plugins.train:Train", "version": "1.0"}
    assert p["outputs"] == ["metrics", "model"]  # sorted
    assert p["inputs"] == {"data": [{"name": "data.jsonl", "digest": D1}],
                           "extra": [{"name": "extra.jsonl", "digest": D2}, {"name": "extra.jsonl", "digest": D3}]}


def test_stage_key_is_stable_hex() -> None:
    k = stage_key(parts())
    assert k == stage_key(parts())
    assert len(k) == 64 and int(k, 16) >= 0


def test_stage_key_does_not_depend_on_dict_order() -> None:
    a = parts(params={"lr": 0.1, "optim": {"name": "adam", "wd": 0}},
              env={"numpy": "1", "torch": "2"}, inputs={"a": [D1], "b": [D2]})
    b = parts(params={"optim": {"wd": 0, "name": "adam"}, "lr": 0.1},
              env={"torch": "2", "numpy": "1"}, inputs={"b": [D2], "a": [D1]})
    assert stage_key(a) == stage_key(b)


def test_stage_key_does_not_depend_on_output_order() -> None:
    assert stage_key(parts(outputs=["a", "b"])) == stage_key(parts(outputs=["b", "a"]))


def test_key_parts_copies_its_arguments() -> None:
    params = {"lr": 0.1}
    inputs = {"data": [("d.jsonl", D1)]}
    p = key_parts(plugin="p", identity="m:P", version="1", code="c", params=params, inputs=inputs,
                  outputs=["o"], env={})
    key = stage_key(p)
    params["lr"] = 0.2
    inputs["data"].append(("d.jsonl", D2))
    assert stage_key(p) == key


@pytest.mark.parametrize("change", [
    {"plugin": "train2"},
    {"identity": "tp_plugins.train:Other"},
    {"version": "1.1"},
    {"code": "e" * 64},
    {"params": {"lr": 0.2, "optim": {"name": "adam", "betas": [0.9, 0.999]}, "epochs": 3}},
    {"params": {"lr": 0.1, "optim": {"name": "sgd", "betas": [0.9, 0.999]}, "epochs": 3}},
    {"params": {"lr": 0.1, "optim": {"name": "adam", "betas": [0.999, 0.9]}, "epochs": 3}},
    {"params": {"lr": 0.1, "optim": {"name": "adam", "betas": [0.9, 0.999]}, "epochs": 3.0}},
    {"params": {"lr": 0.1, "optim": {"name": "adam", "betas": [0.9, 0.999]}, "epochs": 3, "seed": 1}},
    {"inputs": {"data": [D3], "extra": [D2, D3]}},
    {"inputs": {"data": [D1], "extra": [D3, D2]}},  # order of an input's artifacts matters
    {"inputs": {"data": [D1]}},
    {"inputs": {"renamed": [D1], "extra": [D2, D3]}},
    {"outputs": ["model"]},
    {"env": {"numpy": "1.26.1", "torch": "2.2.0"}},
    {"env": {"numpy": "1.26.0"}},
], ids=lambda c: ",".join(c))
def test_stage_key_differs_when_any_part_differs(change: dict[str, Any]) -> None:
    assert stage_key(parts(**change)) != stage_key(parts())


def test_stage_key_differs_with_key_format() -> None:
    p = parts()
    q = copy.deepcopy(p)
    q["format"] = KEY_FORMAT + 1
    assert stage_key(p) != stage_key(q)


# diff --------------------------------------------------------------------------------------

def test_diff_of_equal_parts_is_empty() -> None:
    assert diff(parts(), parts()) == []
    assert diff(parts(params={"b": 1, "a": 2}), parts(params={"a": 2, "b": 1})) == []


def test_diff_parameter_changed() -> None:
    assert diff(parts(), parts(params={**parts()["params"], "lr": 0.01})) == ["parameter lr: 0.1 -> 0.01"]


def test_diff_parameter_added_and_removed() -> None:
    old = parts(params={"lr": 0.1, "dropout": 0.5})
    new = parts(params={"lr": 0.1, "seed": 7})
    assert diff(old, new) == ["parameter dropout removed (was 0.5)", "parameter seed added (7)"]


def test_diff_nested_parameters_use_dotted_paths() -> None:
    old = parts(params={"optim": {"name": "adam", "sched": {"warmup": 10}}, "lr": 1})
    new = parts(params={"optim": {"name": "sgd", "sched": {"warmup": 10, "decay": 0.5}}, "lr": 1})
    assert diff(old, new) == [
        "parameter optim.name: \"adam\" -> \"sgd\"",
        "parameter optim.sched.decay added (0.5)",
    ]


def test_diff_nested_parameter_removed() -> None:
    old = parts(params={"model": {"layers": {"n": 4, "width": 128}}})
    new = parts(params={"model": {"layers": {"n": 4}}})
    assert diff(old, new) == ["parameter model.layers.width removed (was 128)"]


def test_diff_parameter_type_change_is_reported() -> None:
    assert diff(parts(params={"n": 1}), parts(params={"n": 1.0})) == ["parameter n: 1 -> 1.0"]
    assert diff(parts(params={"n": 1}), parts(params={"n": True})) == ["parameter n: 1 -> true"]


def test_diff_list_parameter_is_one_value() -> None:
    assert diff(parts(params={"betas": [1, 2]}), parts(params={"betas": [1, 3]})) == [
        "parameter betas: [1,2] -> [1,3]"]


def test_diff_shortens_long_values() -> None:
    long_old = "x" * 200
    reasons = diff(parts(params={"prompt": long_old}), parts(params={"prompt": "short"}))
    assert len(reasons) == 1
    assert reasons[0].startswith("parameter prompt: \"xxx")
    assert "..." in reasons[0]
    assert reasons[0].endswith('-> "short"')
    assert len(reasons[0]) < 100


def test_diff_input_changed_names_short_digests() -> None:
    old = parts(inputs={"data": [D1]})
    new = parts(inputs={"data": [D2]})
    assert diff(old, new) == [f"input data changed ({D1[:8]} -> {D2[:8]})"]


def test_diff_input_changed_lists_all_artifacts() -> None:
    old = parts(inputs={"shards": [D1, D2]})
    new = parts(inputs={"shards": [D1, D3]})
    assert diff(old, new) == [f"input shards changed ({D1[:8]},{D2[:8]} -> {D1[:8]},{D3[:8]})"]


def test_diff_input_added_and_removed() -> None:
    old = parts(inputs={"a": [D1]})
    new = parts(inputs={"b": [D1]})
    assert diff(old, new) == ["input a removed", "input b added"]


def test_diff_plugin_version() -> None:
    assert diff(parts(version="1.0"), parts(version="2.0")) == ["plugin version 1.0 -> 2.0"]


def test_diff_code_change() -> None:
    assert diff(parts(code="1" * 64), parts(code="2" * 64)) == ["plugin code changed"]


def test_diff_plugin_identity_change_hides_version_and_code() -> None:
    reasons = diff(parts(), parts(identity="other:Plugin", version="9", code="9" * 64))
    assert reasons == ["plugin changed: tp_plugins.train:Train -> other:Plugin"]


def test_diff_package_version_change() -> None:
    old = parts(env={"numpy": "1.26.0", "torch": "2.2.0"})
    new = parts(env={"numpy": "2.0.0", "torch": "2.2.0"})
    assert diff(old, new) == ["package numpy: 1.26.0 -> 2.0.0"]


def test_diff_package_added_and_removed() -> None:
    old = parts(env={"numpy": "1"})
    new = parts(env={"torch": "2"})
    assert diff(old, new) == ["package numpy: 1 -> absent", "package torch: absent -> 2"]


def test_diff_outputs_changed() -> None:
    reasons = diff(parts(outputs=["model"]), parts(outputs=["model", "metrics"]))
    assert reasons == ["outputs changed: ['model'] -> ['metrics', 'model']"]


def test_diff_key_format_changed() -> None:
    new = parts()
    new["format"] = KEY_FORMAT + 1
    assert diff(parts(), new) == [f"the cache key format changed ({KEY_FORMAT} -> {KEY_FORMAT + 1})"]


def test_diff_reports_every_difference_at_once() -> None:
    old = parts()
    new = parts(version="1.1", code="0" * 64, params={**old["params"], "lr": 0.5},
                inputs={"data": [D3], "extra": [D2, D3]}, env={"numpy": "1.26.0", "torch": "2.3.0"})
    assert diff(old, new) == [
        "plugin version 1.0 -> 1.1",
        "plugin code changed",
        "parameter lr: 0.1 -> 0.5",
        f"input data changed ({D1[:8]} -> {D3[:8]})",
        "package torch: 2.2.0 -> 2.3.0",
    ]


def test_diff_is_nonempty_whenever_keys_differ_for_ordinary_changes() -> None:
    base = parts()
    for new in (parts(version="2"), parts(code="0" * 64), parts(params={"lr": 1}),
                parts(inputs={}), parts(outputs=["x"]), parts(env={})):
        assert stage_key(new) != stage_key(base)
        assert diff(base, new) != []


def test_diff_first_parameter_added_to_stage_without_params() -> None:
    assert diff(parts(params={}), parts(params={"lr": 0.1})) == ["parameter lr added (0.1)"]


def test_diff_last_parameter_removed() -> None:
    assert diff(parts(params={"lr": 0.1}), parts(params={})) == ["parameter lr removed (was 0.1)"]


def test_diff_tells_dotted_name_from_nested_parameter() -> None:
    old, new = parts(params={"a.b": 1}), parts(params={"a": {"b": 1}})
    assert stage_key(old) != stage_key(new)
    assert diff(old, new) != []


# input names -------------------------------------------------------------------------------

def test_same_bytes_under_another_name_is_another_key() -> None:
    """Plugins write an input's name into provenance and match sources: patterns against it."""
    old = parts(inputs={"data": [("x.jsonl", D1)]})
    new = parts(inputs={"data": [("y.jsonl", D1)]})
    assert stage_key(old) != stage_key(new)
    assert diff(old, new) == ["input data renamed (x.jsonl -> y.jsonl): plugins may write or match an input's name"]


def test_input_position_is_in_the_key() -> None:
    a = parts(inputs={"data": [("x.jsonl", D1), ("y.jsonl", D2)]})
    b = parts(inputs={"data": [("y.jsonl", D2), ("x.jsonl", D1)]})
    assert stage_key(a) != stage_key(b)


def test_input_digests_reads_both_key_formats() -> None:
    assert input_digests([D1, D2]) == [D1, D2]  # format 1: bare digests
    assert input_digests([{"name": "x", "digest": D1}]) == [D1]


# operational parameters --------------------------------------------------------------------

def test_split_operational_takes_nested_paths_out_without_touching_the_params() -> None:
    params = {"epochs": 3, "threads": 2, "openai": {"poll_seconds": 5, "suffix": "s"}, "judge": None}
    kept, taken = split_operational(params, ["threads", "openai.poll_seconds", "judge.api_key_env", "absent"])
    assert kept == {"epochs": 3, "openai": {"suffix": "s"}, "judge": None}
    assert taken == {"threads": 2, "openai.poll_seconds": 5}
    assert params["openai"] == {"poll_seconds": 5, "suffix": "s"}  # a copy was changed


def test_operational_changes_say_nothing_reruns() -> None:
    assert operational_changes({"threads": 1}, {"threads": 1}) == []
    assert operational_changes({"openai.poll_seconds": 5}, {"openai.poll_seconds": 30}) == [
        "operational setting openai.poll_seconds: 5 -> 30 (operational, not in the key)"]
