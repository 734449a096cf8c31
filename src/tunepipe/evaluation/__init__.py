"""The evaluate stage's parts: the fine-tuned model against its base on held-out examples.

* :mod:`~tunepipe.evaluation.examples`: held-out examples -> (prompt messages, reference reply).
* replies come from the model's backend (:mod:`tunepipe.backends`), through its replier
  (:class:`tunepipe.replies.Replier`): the same decoding and seed for base and tuned.
* :mod:`~tunepipe.evaluation.store`: replies kept per side (resume after a crash, reuse across runs).
* :mod:`~tunepipe.evaluation.metrics` and :mod:`~tunepipe.evaluation.semantic`: per-example scores
  (definitions in :data:`tunepipe.evaluation.metrics.DEFINITIONS`).
* :mod:`~tunepipe.evaluation.judge`: an optional OpenAI judge scoring replies against a rubric.
* :mod:`~tunepipe.evaluation.bootstrap`: aggregate numbers with percentile-bootstrap intervals,
  paired for the base-vs-tuned differences.
* :mod:`~tunepipe.evaluation.gates`: regression gates (``tuned.rouge_l - base.rouge_l >= 0.05``).
* :mod:`~tunepipe.evaluation.report_html` / :mod:`~tunepipe.evaluation.report_md`: the reports.
* :mod:`~tunepipe.evaluation.run`: the stage's run, tying these together.

Heavy libraries (torch, transformers, sentence-transformers, rouge-score, sacrebleu, openai, numpy)
are imported inside functions only: planning and validating a pipeline never loads them.
"""
