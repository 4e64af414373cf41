"""`prism`: one command per pipeline stage (what dvc.yaml runs), plus helpers."""

import typer

from . import baseline, collab, dag, dedup, embed, evaluate, plots, preprocess, quantize, recommend, report, synth, train

app = typer.Typer(
    name="prism",
    help="PRISM pipeline stages. Each reads params.yaml (override with --set KEY=VALUE) and writes "
    "the artifacts that dvc.yaml declares.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("preprocess")(preprocess.preprocess_cmd)
app.command("embed")(embed.embed_cmd)
app.command("collab")(collab.collab_cmd)
app.command("quantize")(quantize.quantize_cmd)
app.command("dedup")(dedup.dedup_cmd)
app.command("train")(train.train_cmd)
app.command("evaluate")(evaluate.evaluate_cmd)
app.command("baseline")(baseline.baseline_cmd)
app.command("recommend")(recommend.recommend_cmd)
app.command("report")(report.report_cmd)
app.command("plots")(plots.plots_cmd)
app.command("dag")(dag.dag_cmd)
app.command("synth")(synth.synth_cmd)

if __name__ == "__main__":
    app()
