"""``twotower demo``: the whole pipeline with no configuration, with visible progress at every step.

Embedded database → data (synthetic with planted tastes, or the bundled MovieLens sample) → train, export,
validate, gate, deploy → serve the API → recommendations for three users with different tastes, over HTTP
→ the evaluation table against the baselines → the HTML quality report. A second run reuses the data and
the deployed version when nothing changed, so it starts serving within seconds.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
from pydantic import SecretStr
from rich.console import Console
from rich.status import Status

from twotower.db import Database
from twotower.demo.api import background_server, check_port, service_token, user_token
from twotower.demo.show import print_user, stage_done
from twotower.errors import DemoError, DeployFailed, EmbeddingAlerts, InputError, QualityGateFailed
from twotower.evaluation import render_slices, render_table
from twotower.inference.explain import (
    Picked,
    data_signature,
    dataset,
    has_synthetic,
    nearest_liked,
    pick_users,
    profile,
    synthetic_tastes,
)
from twotower.ingest.movielens import SOURCE as MOVIELENS_SOURCE
from twotower.ingest.movielens import MovieLensFiles
from twotower.ingest.service import import_movielens
from twotower.monitor import Thresholds, monitor_version
from twotower.registry.store import fetch, open_store
from twotower.registry.versions import active_version
from twotower.settings import Settings
from twotower.synth import SynthConfig, generate
from twotower.synth import validate as validate_synth

__all__ = ["DemoOptions", "run_demo"]

STATE_FILE = "demo.json"  # under the data dir: what the last demo generated and deployed


@dataclass
class DemoOptions:
    movielens: Path | None = None  # import this MovieLens folder instead of generating synthetic data
    serve: bool = True  # keep serving until Ctrl-C
    port: int = 8000
    videos: int = 3000
    users: int = 600
    decisions: int = 50_000
    seed: int = 0
    epochs: int = 3  # enough for the planted tastes; keeps `make demo` within minutes on 2 cores


# -- the run -------------------------------------------------------------------------------------------------
class _Demo:
    def __init__(self, options: DemoOptions, settings: Settings, out: Console, err: Console) -> None:
        self.options = options
        self.settings = settings
        self.out = out
        self.err = err
        self.data_dir = settings.data_dir.expanduser().absolute()
        self.state_path = self.data_dir / STATE_FILE
        self.step_no = 0

    @contextmanager
    def step(self, title: str) -> Iterator[tuple[Status, dict[str, str]]]:
        """A spinner while it runs, then one line with what it did and how long it took."""
        self.step_no += 1
        started = time.perf_counter()
        done: dict[str, str] = {"text": title}
        try:
            with self.out.status(f"{title} ...") as status:
                yield status, done
        except BaseException:
            took = time.perf_counter() - started
            self.out.print(f"[bold red]✗[/] [bold]{self.step_no}.[/] {title} [dim]({took:.1f}s)[/]")
            raise
        took = time.perf_counter() - started
        self.out.print(f"[bold green]✓[/] [bold]{self.step_no}.[/] {done['text']} [dim]({took:.1f}s)[/]")

    # -- state ---------------------------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def save_state(self, state: dict[str, Any]) -> None:
        try:
            self.state_path.write_text(json.dumps(state, indent=2))
        except OSError as exc:
            self.err.print(f"warning: cannot write {self.state_path}: {exc.strerror}; the next run retrains")

    # -- steps ---------------------------------------------------------------------------------------------
    def open_database(self) -> Database:
        with self.step("database") as (_, done):
            db = Database.open(self.settings)
            where = f"embedded Postgres+pgvector under {self.settings.embedded_pg_dir}" if db.embedded else (
                "the database at DATABASE_URL")  # fmt: skip
            done["text"] = f"database: {where}, schema up to date"
        return db

    def load_data(self, db: Database) -> dict[str, Any]:
        """Generate or import the data unless it is already there; its description (for the reuse check)."""
        o = self.options
        if o.movielens is not None:
            MovieLensFiles.find(o.movielens)  # a clear NotFound before anything else
            with self.step("data") as (status, done):
                with db.connection() as conn:
                    imported = dataset(conn, MOVIELENS_SOURCE).videos
                if imported:
                    done["text"] = (
                        f"data: reusing the {imported:,} MovieLens videos already imported "
                        "(`twotower import movielens` re-imports)"
                    )
                else:
                    status.update(f"importing MovieLens from {o.movielens} ...")
                    report = import_movielens(db, o.movielens)
                    v, d = report.videos, report.decisions
                    videos = v.inserted if v else 0
                    decisions = d.inserted if d else 0
                    done["text"] = (
                        f"data: MovieLens imported from {o.movielens}: {videos:,} videos, {decisions:,} decisions"
                    )
            self._other_data(db, MOVIELENS_SOURCE, None)
            return {"source": "movielens"}
        config = SynthConfig(videos=o.videos, users=o.users, decisions=o.decisions, seed=o.seed)
        validate_synth(config)
        with self.step("data") as (status, done):
            with db.connection() as conn:
                have = dataset(conn, config.source, config.seed)
            have_videos, have_decisions = have.videos, have.decisions
            if (have_videos, have_decisions) == (config.videos, config.decisions):
                done["text"] = (
                    f"data: reusing the synthetic catalog ({config.videos:,} videos, {config.users:,} users, "
                    f"{config.decisions:,} decisions, seed {config.seed})"
                )
            else:
                with db.direct() as conn, conn.transaction():
                    result = generate(conn, config, progress=lambda msg: status.update(msg))
                done["text"] = (
                    f"data: synthetic catalog generated: {result.videos.inserted:,} videos, {config.users:,} users, "
                    f"{result.decisions.inserted:,} decisions, {config.tastes} planted tastes (seed {config.seed})"
                )
        self._other_data(db, config.source, config.seed)
        return {"source": "synthetic", **asdict(config)}

    def _other_data(self, db: Database, source: str, seed: int | None) -> None:
        with db.connection() as conn:
            others = dataset(conn, source, seed).other_videos
        if others:
            self.err.print(
                f"note: the database also holds {others:,} other videos (earlier runs with other data); the model "
                "is trained on them too: use another TWOTOWER_DATA_DIR to keep demos apart",
                markup=False,
                highlight=False,
            )

    def model(self, db: Database, data: dict[str, Any]) -> str:
        """The version to show: the one deployed by an earlier demo on the same data, else a new deploy."""
        with db.connection() as conn:
            signature = data_signature(conn)
        key = {"data": data, "signature": signature, "epochs": self.options.epochs}
        state = self.load_state()
        with db.connection() as conn:
            active = active_version(conn)
        if active is not None and state.get("version") == active and state.get("key") == key:
            with self.step("model") as (_, done):
                done["text"] = f"model: reusing version {active} (deployed by an earlier demo on the same data)"
            return active
        version = self.deploy(db)
        self.save_state({"version": version, "key": key})
        return version

    def deploy(self, db: Database) -> str:
        from twotower.pipeline.deploy import (  # lazy: torch, 2.5 s, loads at the train stage
            STAGE_TEXT,
            DeployOptions,
            DeployResult,
        )
        from twotower.pipeline.deploy import deploy as run_deploy  # lazy: torch, 2.5 s, loads at the train stage
        from twotower.train.run import TrainOptions  # lazy: torch, 2.5 s, loads at the train stage

        settings = self.settings
        version = time.strftime("demo-%Y%m%d-%H%M%S")
        trained = self.data_dir / "trained"
        # no refit on the whole training period: it would double the training time for a small gain here
        train = TrainOptions(epochs=self.options.epochs, seed=self.options.seed, output_dir=trained, version=version,
                             refit=False)  # fmt: skip
        options = DeployOptions.from_settings(settings, train=train, gate=True)
        store = open_store(settings)

        def attempt(opts: DeployOptions, title: str) -> DeployResult:
            with self.step(title) as (status, done):
                clock = {"stage": "", "t": time.perf_counter()}

                def on_stage(stage: str) -> None:
                    stage_done(self.out, clock)
                    clock["stage"], clock["t"] = stage, time.perf_counter()
                    text = STAGE_TEXT.get(stage, stage)
                    if stage == "train" and opts.model_dir is not None:
                        text = f"using the model trained above ({opts.model_dir.name})"
                    status.update(f"{stage}: {text} ...")

                result = run_deploy(db, store, opts, on_stage=on_stage, on_progress=lambda m: status.update(m + " ..."))
                stage_done(self.out, clock)
                was = f" (was {result.previous})" if result.previous else ""
                done["text"] = f"deployed and activated version {result.version}{was}"
            return result

        title = "train, export, validate, gate and deploy"
        while True:
            try:
                result = attempt(options, title)
                break
            except DeployFailed as exc:
                if isinstance(exc.cause, QualityGateFailed) and options.gate:
                    # the model was trained and exported but not registered: deploy the same directory
                    self._warn(exc.cause.message, "deploying anyway with the quality gate off (demo data can be "
                               "too small or too easy for the model to beat the linear baseline)")  # fmt: skip
                    options.gate = False
                    options.model_dir = options.model_dir or trained / str(options.train.version)
                    title = "deploy without the quality gate"
                elif isinstance(exc.cause, EmbeddingAlerts) and options.monitor:
                    # that version is registered (now failed) and versions are immutable: the same model under a
                    # new name (training resumes from its finished checkpoint, no epoch is run again)
                    self._warn(exc.cause.message, "deploying anyway with the embedding check off (see the quality "
                               "report below)")  # fmt: skip
                    options.monitor = False
                    options.model_dir = None
                    options.train = replace(options.train, version=f"{options.train.version}-unchecked")
                    title = "retrain from the checkpoint and deploy without the embedding check"
                else:
                    raise
        if result.gate is not None:
            g = result.gate
            active = f", active {g.active_version} {g.active:.4f}" if g.active is not None else ""
            self.out.print(f"   gate passed: Recall@20 {g.model:.4f} vs linear {g.linear:.4f}{active}")
        return result.version

    def _warn(self, why: str, what: str) -> None:
        self.err.print(f"warning: {why}", markup=False, highlight=False)
        self.err.print(f"warning: {what}; never do this in production", markup=False, highlight=False)

    # -- the API -------------------------------------------------------------------------------------------
    @contextmanager
    def server(self) -> Iterator[tuple[str, threading.Event, Any]]:
        with ExitStack() as stack:
            with self.step("API") as (_, done):
                url, stopped, server = stack.enter_context(background_server(self.settings, self.options.port))
                done["text"] = f"API serving on {url}"
            yield url, stopped, server

    def recommendations(self, db: Database, url: str, version: str) -> str:
        """Three users with different tastes: their likes, and the API's five recommendations, with a reason.
        Returns a token for the first one (for trying the API by hand)."""
        with self.step("users") as (_, done), db.direct() as conn:
            synthetic = has_synthetic(conn)
            picked = pick_users(conn, 3, synthetic=synthetic)
            done["text"] = f"picked {len(picked)} users whose likes are dominated by different " + (
                "planted tastes" if synthetic else "tags"
            )
        if not picked:
            self.out.print("no user has enough likes to show recommendations")
            return ""
        tokens: list[str] = []
        with self.step("recommendations") as (_, done), httpx.Client(base_url=url, timeout=30) as client:
            for n, user in enumerate(picked, 1):
                token = user_token(self.settings, user.user_id)
                tokens.append(token)
                response = client.post("/v1/recommendations", json={"limit": 5},
                                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
                if response.status_code != 200:
                    raise DemoError(f"POST /v1/recommendations answered {response.status_code}: {response.text[:300]}")
                answer = response.json()
                with db.direct() as conn:
                    self._print_user(conn, n, user, answer, version, synthetic)
            done["text"] = f"recommendations for {len(picked)} users over HTTP (POST {url}/v1/recommendations)"
        return tokens[0]

    def _print_user(
        self, conn: psycopg.Connection[Any], n: int, user: Picked, answer: dict[str, Any], version: str, synthetic: bool
    ) -> None:
        ids = [uuid.UUID(r["id"]) for r in answer.get("recommendations", [])]
        because = nearest_liked(conn, user.user_id, ids, version) if answer.get("algorithm") == "two_tower" else {}
        tastes = synthetic_tastes(conn, ids) if synthetic else None
        print_user(self.out, n, user, profile(conn, user.user_id), answer, because, tastes)

    def evaluation(self, db: Database, version: str) -> None:
        """The model and the baselines on the temporal split: the same report as ``twotower evaluate``."""
        from twotower.train.evaluate import evaluate_model  # lazy: torch, 2.5 s, loads at the evaluate stage

        with self.step("evaluation") as (status, done):
            model_dir = fetch(open_store(self.settings), version, self.settings.model_cache_dir)
            report = evaluate_model(db, model_dir, baselines=True, progress=status.update)
            d = report.data
            done["text"] = (
                f"evaluation of {version} vs the baselines: temporal split, {d['test_users']:,} test users, "
                f"{d['test_likes']:,} test likes"
            )
        for warning in report.warnings:
            self.err.print(f"warning: {warning}", markup=False, highlight=False)
        self.out.print(render_table(report.results))
        self.out.print(render_slices(report.results))

    def quality_report(self, db: Database, version: str) -> Path:
        from twotower.monitor.report import write_report  # lazy: matplotlib, 1.5 s, loads at the report stage

        target = self.data_dir / "quality.html"
        with self.step("quality report") as (_, done):
            result = monitor_version(db, Thresholds.from_settings(self.settings), version=version,
                                     like_window_hours=self.settings.monitor_like_window_hours)  # fmt: skip
            write_report(db, result, target)
            verdict = "no alerts" if result.passed else f"{len(result.alerts)} alert(s)"
            done["text"] = f"quality report of {version}: {verdict}"
        for alert in result.alerts:
            self.err.print(f"alert {alert.name}: {alert.message}", markup=False, highlight=False)
        return target


def run_demo(options: DemoOptions, settings: Settings, out: Console, err: Console) -> None:
    """Run the demo; with ``options.serve``, keep serving until Ctrl-C (then return normally)."""
    if options.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {options.epochs}")
    if options.movielens is not None:
        MovieLensFiles.find(options.movielens)
    check_port(options.port)
    if settings.jwt_secret is None:
        settings = settings.model_copy(update={"jwt_secret": SecretStr(secrets.token_urlsafe(48))})
        out.print("[dim]TWOTOWER_JWT_SECRET is unset: this run signs its tokens with a random secret[/]")
    if "serve_try_page" not in settings.model_fields_set:  # the demo serves the swipe page unless told not to
        settings = settings.model_copy(update={"serve_try_page": True})
    demo = _Demo(options, settings, out, err)
    started = time.perf_counter()
    db = demo.open_database()
    try:
        data = demo.load_data(db)
        version = demo.model(db, data)
        with demo.server() as (url, stopped, server):
            token = demo.recommendations(db, url, version)
            demo.evaluation(db, version)
            report = demo.quality_report(db, version)
            out.print()
            out.print(f"quality report: {report.as_uri()}")
            out.print(f"API docs:       {url}/docs")
            out.print(f"console:        {url}/console", markup=False)
            out.print(f"  sign in with: {service_token(settings)}",
                      markup=False, soft_wrap=True)  # fmt: skip
            if settings.serve_try_page:
                out.print(f"swipe page:     {url}/try", markup=False)
            if token:
                out.print(
                    f"try it:         curl -X POST {url}/v1/recommendations -H 'Content-Type: application/json' "
                    f"-H 'Authorization: Bearer {token}' -d '{{\"limit\": 5}}'",
                    markup=False,
                    soft_wrap=True,
                )
            out.print(f"[bold]demo ready in {time.perf_counter() - started:.1f}s[/]")
            if options.serve:
                out.print("serving; press Ctrl-C to stop")
                try:
                    while not stopped.wait(0.5):
                        pass
                    raise DemoError("the API server stopped unexpectedly (see the messages above)")
                except KeyboardInterrupt:
                    out.print("stopping ...")
                server.should_exit = True
            else:
                out.print("--no-serve: stopping the API")
    finally:
        db.close()
