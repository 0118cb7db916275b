"""`atelier`: run the pipeline, open the web UIs, serve the galleries for rating, seed the default corpora,
sample a registered model, verify what it made."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from common.atomic import atomic_write_bytes, atomic_write_text
from common.mlflow_store import local_store, resolve_version, split_reference, tracking_uri
from corpora.shards import png_bytes
from ratings import DEFAULT_PORT as GALLERY_PORT
from resources.storage import DATA_ROOT_ENV, default_data_root

DAGSTER_YAML = """\
# Written by `atelier` on first use; edit freely, it is never overwritten.
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 2  # queued runs wait: an ingest and a training may overlap on 2 cores
  pools:
    default_limit: 1  # the `gpu` pool holds every training asset: one training at a time
"""
UI_HOST = "127.0.0.1"
UI_STOP_GRACE_S = 20.0
SAMPLE_SUFFIX = {"image": ".png", "midi": ".mid", "video": ".mp4"}  # what `atelier sample` writes, by kind


def ensure_dagster_home(data_root: Path) -> Path:
    """Keep the Dagster instance under the data root unless DAGSTER_HOME says otherwise."""
    home = Path(os.environ.get("DAGSTER_HOME") or data_root / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        atomic_write_text(home / "dagster.yaml", DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run(job_name: str, everything: bool = False, config_file: Path | None = None) -> int:
    """Materialize `job_name`. The main job: ingest, then only what is missing or out of date
    (pipelines/freshness.py; everything with `everything`), then the site (pipelines/runner.py).
    `config_file` is Dagster run config as YAML, the keys the launchpad takes."""
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.runner import Outcome, config_for, load_run_config, print_summary, run_pipeline

    run_config = load_run_config(config_file)
    data_root = Path(default_data_root())
    home = ensure_dagster_home(data_root)
    with dg.DagsterInstance.get() as instance:
        if job_name == "main":
            outcome = run_pipeline(defs, instance, run_config, everything)
        else:
            job = defs.resolve_job_def(job_name)
            keys = job.asset_layer.selected_asset_keys
            outcome = Outcome([job.execute_in_process(instance=instance, raise_on_error=False,
                                                      run_config=config_for(run_config, keys))])
    print_summary(outcome)
    print(f"\nresults are under {data_root}; Dagster runs are in {home} (open them with `atelier ui`)")
    return 0 if outcome.success else 1


def ui_commands(data_root: Path, dagster_port: int, mlflow_port: int, gallery_port: int) -> dict[str, list[str]]:
    """The three servers `atelier ui` runs: Dagster (webserver and daemon), the MLflow UI and the
    gallery site with its rating pages, on the loopback interface, against the same data root."""
    bin_dir = Path(sys.executable).parent  # the venv's tools, even when the venv is not activated
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    tracking_uri, artifact_root = local_store(data_root)
    return {
        "dagster": [str(bin_dir / "dagster"), "dev", "-w", str(workspace), "-h", UI_HOST, "-p", str(dagster_port)],
        "mlflow": [str(bin_dir / "mlflow"), "server", "--host", UI_HOST, "--port", str(mlflow_port),
                   "--backend-store-uri", tracking_uri,
                   "--default-artifact-root", str(artifact_root), "--workers", "1"],
        "gallery": [sys.executable, "-m", "pipelines.cli", "gallery", "--port", str(gallery_port)],
    }


def ui(dagster_port: int, mlflow_port: int, gallery_port: int, automation: bool) -> int:
    """Start the three servers; stop them all when one exits, on Ctrl-C, or on SIGTERM."""
    import signal
    import subprocess

    from pipelines.definitions import DAGSTER_UI_ENV, MLFLOW_UI_ENV, build_resources

    data_root = Path(default_data_root())
    ensure_dagster_home(data_root)
    build_resources(str(data_root))["mlflow"].initialize()  # migrate once, before two servers open it
    env = {**os.environ, DATA_ROOT_ENV: str(data_root),  # the code server resolves the same data root
           MLFLOW_UI_ENV: f"http://{UI_HOST}:{mlflow_port}", DAGSTER_UI_ENV: f"http://{UI_HOST}:{dagster_port}"}
    if automation:
        env["ATELIER_AUTOMATION"] = "on"
    # A shell starts background jobs with SIGINT ignored; Ctrl-C and a service manager's SIGTERM
    # must both stop the servers.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    servers = {name: subprocess.Popen(command, env=env, start_new_session=True)
               for name, command in ui_commands(data_root, dagster_port, mlflow_port, gallery_port).items()}
    print(f"Dagster UI: {env[DAGSTER_UI_ENV]}   MLflow UI: {env[MLFLOW_UI_ENV]}   "
          f"Galleries and rating: http://{UI_HOST}:{gallery_port}/   (Ctrl-C stops all three)", flush=True)
    try:
        while all(server.poll() is None for server in servers.values()):
            time.sleep(0.5)
        exited = [name for name, server in servers.items() if server.poll() is not None]
        print(f"{', '.join(exited)} exited; stopping the others", flush=True)
    except KeyboardInterrupt:
        print("stopping the servers", flush=True)
    finally:
        _stop(servers.values())
    return 0


def gallery(port: int) -> int:
    """Serve data/galleries/ with the rating pages on the loopback interface until Ctrl-C."""
    import uvicorn

    from ratings.server import HOST, create_app
    from resources.mlflow_registry import registry_for
    from ratings.store import VoteStore, default_votes_url

    data_root = Path(default_data_root())
    store = VoteStore(default_votes_url(data_root))
    app = create_app(data_root, registry_for(data_root).client(), store)
    print(f"Galleries: http://{HOST}:{port}/   rating: http://{HOST}:{port}/rate   votes: {store.engine.url!r}   "
          "(Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=HOST, port=port, log_level="warning")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(servers, grace_s: float = UI_STOP_GRACE_S) -> None:
    """SIGINT to each server's process group (dagster dev then stops its webserver, daemon and
    code server; uvicorn its workers), then SIGKILL whatever is still alive after `grace_s`."""
    import signal

    for server in servers:
        if server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for server in servers:
        with contextlib.suppress(Exception):
            server.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)


def seed() -> int:
    from corpora.defaults import DEFAULT_CORPORA, seed_if_empty

    root = Path(default_data_root())
    for corpus in DEFAULT_CORPORA:
        written = seed_if_empty(corpus, root / "raw" / corpus)
        print(f"{corpus}: {'wrote ' + str(written) + ' files' if written else 'already has files, left alone'}")
    return 0


def sample(reference: str, n: int, seed: int, label: str | None, output: Path | None) -> int:
    """Sample from a registered model using only MLflow (no Dagster, no training code), and write
    what its family makes: a PNG grid, MIDI files with rendered WAVs, or an MP4."""
    import mlflow

    from models.family import family
    from provenance.credentials import Provenance, sign_file, signing_identity

    try:
        name, alias_or_version = split_reference(reference)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    record = family(name)
    output = output or Path(f"samples{SAMPLE_SUFFIX[record.samples]}")
    data_root = Path(default_data_root())
    mlflow.set_tracking_uri(tracking_uri(data_root))
    version = resolve_version(mlflow.MlflowClient(), name, alias_or_version)  # once: an alias may move while we sample
    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    request = {"n": n, "seed": seed, **({"label": label} if label is not None else {})}
    written = WRITERS[record.samples](model, request, output)
    provenance, identity = Provenance.of_model_version(version, [seed]), signing_identity(data_root)
    for path in written:
        sign_file(path, provenance, data_root, identity=identity)
    print(f"wrote {len(written)} file(s) from {reference} (version {version.version}), each with a content credential "
          f"(atelier verify FILE): {', '.join(str(path) for path in written)}")
    return 0


def verify(path: Path) -> int:
    """Print a file's content credential: what made it, and whether it validates (exit status 1 if not)."""
    from provenance.credentials import report_lines, verify_file

    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    found = verify_file(path)
    print("\n".join(report_lines(found)))
    return 0 if found.valid else 1


def write_pictures(model, request: dict, output: Path) -> list[Path]:
    from corpora.preview import contact_sheet

    pictures = model.predict(request)
    cell = max(pictures.shape[1], 32)
    atomic_write_bytes(output, png_bytes(contact_sheet(pictures, columns=min(len(pictures), 8), cell=cell)))
    return [output]


def write_midi(model, request: dict, output: Path) -> list[Path]:
    """Each MIDI file beside its rendering: <stem>-<i>.mid and <stem>-<i>.wav."""
    from models.midi_audio import render_wav

    written = []
    for index, midi in enumerate(model.predict(request)):
        stem = output.with_name(f"{output.stem}-{index}")
        atomic_write_bytes(stem.with_suffix(".mid"), midi)
        wav, _ = render_wav(midi)
        atomic_write_bytes(stem.with_suffix(".wav"), wav)
        written += [stem.with_suffix(".mid"), stem.with_suffix(".wav")]
    return written


def write_video(model, request: dict, output: Path) -> list[Path]:
    """The clips side by side in one MP4: each clip's context, then its continuation."""
    import numpy as np

    from corpora.video import write_video as encode

    clips = model.predict({**request, "with_context": True})  # (n, T, H, W, C)
    side_by_side = np.concatenate(list(clips), axis=2)
    fps = getattr(model.unwrap_python_model(), "fps", None)  # the rate of the corpus it was trained on
    if not fps:
        raise SystemExit("this model's bundle does not say its frame rate: register it again with this version")
    encode(output, side_by_side, fps)
    return [output]


WRITERS = {"image": write_pictures, "midi": write_midi, "video": write_video}


def repaint(content: Path, style: Path, output: Path, feature_network: str, classifier: Path | None,
            steps: int | None, size: int | None, seed: int, threads: int) -> int:
    """Gatys-style transfer of one picture's style onto another, with no registry involved."""
    import numpy as np
    import torch
    from PIL import Image

    from models.painting_gan.style_transfer import StyleTransferConfig, transfer

    torch.set_num_threads(threads)
    state = None
    if feature_network == "classifier":
        if classifier is None:
            raise SystemExit("--feature-network classifier needs --classifier (the image_classifier asset's weights file)")
        state = torch.load(classifier, map_location="cpu", weights_only=True)["model"]
    pictures = [np.asarray(Image.open(path).convert("RGB")) for path in (content, style)]
    chosen = {key: value for key, value in {"steps": steps, "size": size}.items() if value is not None}
    config = StyleTransferConfig(feature_network=feature_network, seed=seed, **chosen)
    result = transfer(*pictures, config, classifier_state=state)
    atomic_write_bytes(output, png_bytes(result.image))
    print(f"wrote {output} ({result.image.shape[1]}x{result.image.shape[0]}) in {result.seconds:.1f} s; features: "
          f"{result.feature_network}; style loss {result.style_losses[0]:.4g} -> {result.style_losses[-1]:.4g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="atelier", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="materialize a job (default: main) in the persistent instance")
    run_parser.add_argument("--job", default="main")
    run_parser.add_argument("--all", action="store_true",
                            help="main job: recompute every asset, not only those missing or out of date")
    run_parser.add_argument("--config", type=Path, metavar="FILE",
                            help="Dagster run config as YAML, the keys the launchpad takes "
                                 "(e.g. ops: {midi_corpus: {config: {max_reject_rate: 0.2}}})")
    ui_parser = commands.add_parser(
        "ui", help=f"start the Dagster UI (with its daemon), the MLflow UI and the gallery site on {UI_HOST}")
    ui_parser.add_argument("--port", type=int, default=3000, help="Dagster UI port")
    ui_parser.add_argument("--mlflow-port", type=int, default=5000)
    ui_parser.add_argument("--gallery-port", type=int, default=GALLERY_PORT, help="the gallery site and its rating pages")
    ui_parser.add_argument("--automation", action="store_true",
                           help="start the schedule and sensors switched on (see README, Automation)")
    gallery_parser = commands.add_parser(
        "gallery", help=f"serve only the gallery site and its rating pages on {UI_HOST} (docs/ratings.md)")
    gallery_parser.add_argument("--port", type=int, default=GALLERY_PORT)
    commands.add_parser("seed", help="write the default corpora into empty data/raw/<corpus>/ folders")
    sample_parser = commands.add_parser(
        "sample", help="sample a registered model and write what its family makes: sample image-gan@champion -n 16")
    sample_parser.add_argument("model", help="name@alias or name/version, e.g. image-gan@champion")
    sample_parser.add_argument("-n", type=int, default=16)
    sample_parser.add_argument("--seed", type=int, default=0)
    sample_parser.add_argument("--label", help="class name or index, for class-conditional models")
    sample_parser.add_argument("-o", "--output", type=Path,
                               help="where to write (default samples.png, samples.mid or samples.mp4 by family)")
    verify_parser = commands.add_parser(
        "verify", help="print a generated file's content credential and whether it validates (exit 1 if not)")
    verify_parser.add_argument("file", type=Path, metavar="FILE")
    transfer_parser = commands.add_parser(
        "style-transfer", help="repaint CONTENT_IMAGE in the style of --style PICTURE (Gatys et al., no downloads)")
    transfer_parser.add_argument("content", type=Path, metavar="CONTENT_IMAGE")
    transfer_parser.add_argument("--style", type=Path, required=True, metavar="PICTURE")
    transfer_parser.add_argument("-o", "--output", type=Path, default=Path("styled.png"))
    transfer_parser.add_argument("--feature-network", choices=["random", "classifier"], default="random")
    transfer_parser.add_argument("--classifier", type=Path, help="weights of the image_classifier asset")
    transfer_parser.add_argument("--steps", type=int, help="optimizer steps (default: the demo setting's)")
    transfer_parser.add_argument("--size", type=int, help="long side of the result (default: the demo setting's)")
    transfer_parser.add_argument("--seed", type=int, default=0)
    transfer_parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars garble the run log
    from pipelines.progress import quiet_known_warnings

    quiet_known_warnings(inherited=True)
    if args.command == "run":
        return run(args.job, args.all, args.config)
    if args.command == "ui":
        return ui(args.port, args.mlflow_port, args.gallery_port, args.automation)
    if args.command == "gallery":
        return gallery(args.port)
    if args.command == "style-transfer":
        return repaint(args.content, args.style, args.output, args.feature_network, args.classifier, args.steps,
                       args.size, args.seed, args.threads)
    if args.command == "verify":
        return verify(args.file)
    if args.command == "sample":
        return sample(args.model, args.n, args.seed, args.label, args.output)
    return seed()


if __name__ == "__main__":
    sys.exit(main())
