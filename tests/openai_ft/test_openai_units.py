"""Pure parts of the OpenAI backend, on payloads shaped like the real API's (for what the emulator
cannot produce: failed jobs, result files, checkpoints, metrics events)."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys

import pytest
from openai_helpers import MODEL, chat_example, dpo_example, make_params, write_jsonl

from tunepipe.errors import StageFailed, UserError
from tunepipe.openai_ft import config, results, state
from tunepipe.openai_ft.estimate import estimate, example_tokens
from tunepipe.openai_ft.jobs import MAX_FAILED, decide
from tunepipe.openai_ft.prepare import prepare

RESULT_CSV = ("step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n"
              "1,1.52,0.61,,\n2,1.20,0.66,,\n3,0.98,0.70,1.05,0.68\n4,0.91,0.72,,\n")


def job(**over):
    from openai.types.fine_tuning import FineTuningJob

    payload = {"id": "ftjob-abc123", "object": "fine_tuning.job", "created_at": 1_721_764_800, "error": None,
               "fine_tuned_model": None, "finished_at": None,
               "hyperparameters": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"},
               "model": MODEL, "organization_id": "org-123", "result_files": [], "seed": 42, "status": "running",
               "trained_tokens": None, "training_file": "file-train", "validation_file": None,
               "metadata": {"tunepipe_key": "k" * 32},
               "method": {"type": "supervised", "supervised": {"hyperparameters": {
                   "batch_size": 1, "learning_rate_multiplier": 1.8, "n_epochs": 3}}}}
    payload.update(over)
    return FineTuningJob.construct(**payload)  # as the SDK builds responses: lenient (status "paused" exists)


def failed(job_id: str, created: int, code: str = "invalid_training_file", param: str | None = "training_file",
           message: str = "The job failed due to an invalid training file. Invalid file format."):
    return job(id=job_id, created_at=created, status="failed", finished_at=created + 60,
               error={"code": code, "message": message, "param": param})


# ---------------------------------------------------------------------------------------------
# settings

def test_settings_leave_auto_to_the_api_and_shape_the_method() -> None:
    s = config.settings_from_params(make_params(None), "Marv FT (v2)")
    assert s.suffix == "marv-ft-v2" and s.method_payload() == {"type": "supervised"}
    s = config.settings_from_params(make_params(None, epochs=3, batch_size=8, method="dpo", beta=0.1), "x")
    assert s.method_payload() == {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3, "batch_size": 8,
                                                                             "beta": 0.1}}}
    s = config.settings_from_params(make_params(None, learning_rate_multiplier=2, beta=0.5), "x")
    assert s.method_payload() == {"type": "supervised", "supervised": {"hyperparameters": {
        "learning_rate_multiplier": 2}}}  # beta belongs to DPO only


def test_suffix_from_stage_name() -> None:
    assert config.sanitize_suffix("Train: Marv/FT__v2!") == "train-marv-ft-v2"
    assert config.sanitize_suffix("___") == "tunepipe"
    assert len(config.sanitize_suffix("a" * 100)) == 64


@pytest.mark.parametrize("params, match", [
    (make_params(None, suffix="x" * 65), "1 to 64 characters"),
    (make_params(None, seed=-1), "integer from 0"),
    (make_params(None, epochs=0), "'epochs' is 0"),
    (make_params(None, batch_size=512), "at most 256"),
    (make_params(None, method="reinforcement"), "use one of supervised, dpo"),
    (make_params(None, beta=3, method="dpo"), "openai.beta"),
    (make_params(None, metadata={"tunepipe_key": "x"}), "reserved"),
    (make_params(None, metadata={f"k{i}": "v" for i in range(15)}), "at most 14 are yours"),
    (make_params(None, metadata={"k": "v" * 513}), "at most 512"),
    (make_params(None, poll_seconds=0), "poll_seconds"),
    (make_params(None, api_key_env="not a name"), "api_key_env"),
])
def test_bad_settings_are_user_errors(params, match) -> None:
    with pytest.raises(UserError, match=match):
        config.settings_from_params(params, "train")


def test_job_metadata_identifies_the_stage() -> None:
    s = config.settings_from_params(make_params(None, metadata={"team": "a"}), "train")
    assert config.job_metadata(s, "train", "0123456789abcdef" * 4) == {
        "team": "a", "tunepipe_stage": "train", "tunepipe_key": "0123456789abcdef" * 2}


# ---------------------------------------------------------------------------------------------
# what to do with this key's earlier jobs

def test_decide_attaches_to_a_live_job_and_prefers_a_succeeded_one() -> None:
    running, done = job(id="ftjob-run", status="running"), job(id="ftjob-done", status="succeeded")
    paused = job(id="ftjob-paused", status="paused")  # not in the SDK's Literal: an open string
    assert decide([running]).job.id == "ftjob-run"
    assert decide([running, done]).job.id == "ftjob-done"
    assert decide([paused, failed("ftjob-f", 1)]).action == "attach"
    assert decide([]).action == "create" and decide([]).message == ""


def test_decide_refuses_to_repeat_a_failure_on_a_parameter() -> None:
    d = decide([failed("ftjob-f1", 10)])
    assert d.action == "refuse"
    assert "invalid_training_file: The job failed due to an invalid training file" in d.message
    assert "(param: training_file)" in d.message and "change the seed" in d.message


def test_decide_retries_other_failures_a_few_times() -> None:
    server = lambda i: failed(f"ftjob-f{i}", i, code="server_error", param=None,  # noqa: E731
                              message="The job failed due to an internal error.")
    d = decide([server(1)])
    assert d.action == "create" and "ftjob-f1 (failed: server_error" in d.message and "1 failed so far" in d.message
    jobs = [server(i) for i in range(MAX_FAILED, 0, -1)]
    d = decide(jobs)
    assert d.action == "refuse" and f"{MAX_FAILED} fine-tuning jobs" in d.message
    # scratch remembers failures the listing no longer shows
    remembered = [{"id": f"ftjob-old{i}", "status": "failed", "created_at": i, "error": None} for i in range(2)]
    assert decide([server(5)], remembered).action == "refuse"


def test_decide_creates_after_a_cancelled_job() -> None:
    d = decide([job(id="ftjob-c", status="cancelled")])
    assert d.action == "create" and "ftjob-c (cancelled" in d.message


# ---------------------------------------------------------------------------------------------
# a failed job: StageFailed with OpenAI's error; scratch forgets the job

def test_failed_job_raises_with_code_message_param_and_clears_scratch(tmp_path) -> None:
    from tunepipe.openai_ft.backend import _FineTuning
    from tunepipe.plugins import StageContext

    ctx = StageContext(stage="train", key="k" * 64, outputs={}, scratch=tmp_path, log=logging.getLogger("t"))
    state.save(tmp_path, state.State(job_id="ftjob-f1", last_event_id="ftevent-1"))
    run = _FineTuning(ctx, tmp_path / "t.jsonl", None, config.settings_from_params(make_params(None), "train"), None, None)
    with pytest.raises(StageFailed) as e:
        run.ended_badly(failed("ftjob-f1", 10, message="Line 3: too many tokens"))
    text = str(e.value)
    assert "ftjob-f1 failed: invalid_training_file: Line 3: too many tokens (param: training_file)" in text
    st = state.load(tmp_path)
    assert st.job_id is None and st.last_event_id is None
    assert st.ended == [{"id": "ftjob-f1", "status": "failed", "created_at": 10, "error": {
        "code": "invalid_training_file", "message": "Line 3: too many tokens", "param": "training_file"}}]


# ---------------------------------------------------------------------------------------------
# results

def test_result_file_plain_or_base64() -> None:
    assert results.decode_result_file(RESULT_CSV.encode()) == RESULT_CSV
    encoded = base64.b64encode(RESULT_CSV.encode())
    assert results.decode_result_file(encoded) == RESULT_CSV
    assert results.decode_result_file(base64.encodebytes(RESULT_CSV.encode())) == RESULT_CSV  # wrapped lines
    with pytest.raises(ValueError):
        results.decode_result_file(b"\x00\x01 not a csv")


def test_metrics_csv_parsing_loss_and_summary() -> None:
    columns, rows = results.parse_metrics_csv(RESULT_CSV)
    assert columns == list(results.RESULT_COLUMNS)
    assert rows[0] == {"step": 1, "train_loss": 1.52, "train_accuracy": 0.61, "valid_loss": None,
                       "valid_mean_token_accuracy": None}
    assert results.loss_rows(rows)[2] == {"step": 3, "train_loss": 0.98, "valid_loss": 1.05}
    summary = results.metrics_summary(rows, source="result file", trained_tokens=1000)
    assert summary["steps"] == 4 and summary["final_train_loss"] == 0.91 and summary["min_train_loss"] == 0.91
    assert summary["final_valid_loss"] == 1.05 and summary["final_valid_mean_token_accuracy"] == 0.68
    assert results.metrics_summary([], source=None, trained_tokens=None)["note"].startswith("no metrics")


def test_metrics_from_events() -> None:
    from openai.types.fine_tuning import FineTuningJobEvent

    def ev(i, data, type_="metrics"):
        return FineTuningJobEvent.model_validate({"id": f"ftevent-{i}", "object": "fine_tuning.job.event",
                                                  "created_at": 1_721_764_800 + i, "level": "info",
                                                  "message": f"Step {i}", "type": type_, "data": data})

    events = [ev(3, {"step": 2, "train_loss": 1.1, "train_mean_token_accuracy": 0.7, "total_steps": 2,
                     "full_valid_loss": 1.3}),
              ev(2, {"step": 1, "train_loss": 1.5, "valid_loss": 1.6, "total_steps": 2}),
              ev(1, {}, "message")]
    rows = results.metrics_from_events(events)
    assert rows == [{"step": 1, "train_loss": 1.5, "valid_loss": 1.6},
                    {"step": 2, "train_loss": 1.1, "train_accuracy": 0.7, "full_valid_loss": 1.3}]


def test_checkpoints_hyperparameters_and_model_record(tmp_path) -> None:
    from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

    def ckpt(step):
        return FineTuningJobCheckpoint.model_validate({
            "id": f"ftckpt_{step}", "object": "fine_tuning.job.checkpoint", "created_at": 1_721_764_800 + step,
            "fine_tuned_model_checkpoint": f"ft:{MODEL}:org:marv:abc123:ckpt-step-{step}",
            "fine_tuning_job_id": "ftjob-abc123", "step_number": step,
            "metrics": {"step": step, "train_loss": 0.5, "train_mean_token_accuracy": 0.8}})

    cps = results.checkpoint_records([ckpt(30), ckpt(10), ckpt(20)])
    assert [c["step"] for c in cps] == [10, 20, 30] and cps[0]["model"].endswith(":ckpt-step-10")
    assert cps[0]["metrics"] == {"step": 10.0, "train_loss": 0.5, "train_mean_token_accuracy": 0.8}

    done = job(status="succeeded", fine_tuned_model=f"ft:{MODEL}:org:marv:abc123", finished_at=1_721_768_400,
               trained_tokens=123_456, result_files=["file-results"])
    assert results.resolved_hyperparameters(done) == {"batch_size": 1, "learning_rate_multiplier": 1.8, "n_epochs": 3}
    legacy = job(method=None, hyperparameters={"n_epochs": 4, "batch_size": "auto"})
    assert results.resolved_hyperparameters(legacy) == {"n_epochs": 4, "batch_size": "auto"}

    record = results.model_record(done, checkpoints=cps, estimate={"billable_tokens": 120_000}, metrics_source="x")
    assert record["fine_tuned_model"] == f"ft:{MODEL}:org:marv:abc123" and record["trained_tokens"] == 123_456
    assert record["job"]["finished_at"] == 1_721_768_400 and record["job"]["error"] is None
    assert record["result_files"] == ["file-results"] and len(record["checkpoints"]) == 3

    columns, rows = results.parse_metrics_csv(RESULT_CSV)
    out = tmp_path / "out"
    summary = results.metrics_summary(rows, source="x", trained_tokens=1)
    results.write_artifacts(out, record, columns, rows, summary, result_csv=RESULT_CSV)
    assert (out / "metrics.csv").read_text() == RESULT_CSV  # the result file as OpenAI wrote it
    results.write_artifacts(tmp_path / "rows", record, columns, rows, summary)
    assert (tmp_path / "rows" / "metrics.csv").read_text().splitlines()[1] == "1,1.52,0.61,,"
    assert (out / "loss.csv").read_text().splitlines()[:4] == ["step,train_loss,valid_loss", "1,1.52,", "2,1.2,",
                                                              "3,0.98,1.05"]
    assert json.loads((out / "model.json").read_text())["format"] == "tunepipe-model/1"


def test_job_error_of_a_failed_job() -> None:
    err = results.job_error(failed("ftjob-x", 1))
    assert err == {"code": "invalid_training_file",
                   "message": "The job failed due to an invalid training file. Invalid file format.",
                   "param": "training_file"}
    assert results.job_error(job()) is None
    assert results.describe_error(None) == "no error details given"


# ---------------------------------------------------------------------------------------------
# estimate and the uploaded bytes

def test_estimate_counts_like_the_format_stage(tmp_path) -> None:
    from tunepipe.data.tokens import encoding_for_model
    from tunepipe.data.cookbook_counts import count_openai as _count_openai

    enc = encoding_for_model(MODEL)
    tool_example = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                                 {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                                     "name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                                 {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                                 {"role": "assistant", "content": "Sunny.", "weight": 1}],
                    "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]}
    for rec in (chat_example(1), tool_example):
        assert example_tokens(enc, rec, "supervised") == _count_openai(enc, rec, "chat")[1]
    assert example_tokens(enc, dpo_example(1), "dpo") == _count_openai(enc, dpo_example(1), "dpo")[1]

    train = write_jsonl(tmp_path / "t.jsonl", [chat_example(i) for i in range(12)])
    per = [example_tokens(enc, chat_example(i), "supervised") for i in range(12)]
    est = estimate(train, make_params(None))
    assert est.examples == 12 and est.epochs == 8  # the cookbook: 100 // 12
    assert est.billable_tokens == sum(per) * 8 and est.usd == round(sum(per) * 8 * 3.0 / 1e6, 4)
    assert str(est).count("\n") == 0 and "billable tokens" in str(est)

    clipped = estimate(train, make_params(None, epochs=2, context_limits={MODEL: 40}, prices={MODEL: 10.0}))
    assert clipped.billable_tokens == sum(min(t, 40) for t in per) * 2
    assert clipped.over_limit == sum(t > 40 for t in per) and clipped.price_source == "openai.prices"
    unknown = estimate(train, make_params(None, model="my-model"))
    assert unknown.usd is None and unknown.note and "cost unknown" in str(unknown)


def test_prepared_bytes_are_deterministic_and_stripped(tmp_path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [chat_example(i) for i in range(3)])
    reordered = [{"meta": {"other": i}, "messages": chat_example(i)["messages"], "extra": 1} for i in range(3)]
    b = write_jsonl(tmp_path / "b.jsonl", reordered)
    pa = prepare(a, tmp_path / "pa", "train", "supervised")
    pb = prepare(b, tmp_path / "pb", "train", "supervised")
    assert pa.sha256 == pb.sha256 and pa.path.read_bytes() == pb.path.read_bytes()
    assert pa.filename == f"tunepipe-{pa.sha256[:16]}-train.jsonl" and pa.examples == 3
    assert b'"meta"' not in pa.path.read_bytes() and b'"extra"' not in pa.path.read_bytes()
    assert list(pa.path.parent.iterdir()) == [pa.path]  # no temporary file left

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert prepare(empty, tmp_path / "pe", "validation", "supervised") is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_example(1)) + "\n{oops\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        prepare(bad, tmp_path / "pbad", "train", "supervised")


def test_state_round_trip_and_garbage(tmp_path) -> None:
    st = state.State(job_id="ftjob-1", files={"ab": {"id": "file-1", "bytes": 3}}, last_event_id="e",
                     ended=[{"id": "ftjob-0", "status": "failed"}])
    state.save(tmp_path, st)
    assert state.load(tmp_path) == st
    assert [p.name for p in tmp_path.iterdir()] == ["openai.json"]
    (tmp_path / "openai.json").write_text("{half")
    assert state.load(tmp_path) == state.State()


def test_openai_is_imported_lazily() -> None:
    code = ("import sys, tunepipe.openai_ft.backend, tunepipe.openai_ft.estimate, tunepipe.openai_ft.jobs; "
            "assert 'openai' not in sys.modules, 'openai imported at module level'")
    subprocess.run([sys.executable, "-c", code], check=True)
