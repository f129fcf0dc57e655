"""``twotower demo``: the whole pipeline with no configuration, with visible progress at every step.

Embedded database → data (synthetic with planted tastes, or the bundled MovieLens sample) → train, export,
validate, gate, deploy → serve the API → recommendations for three users with different tastes, over HTTP
→ the evaluation table against the baselines → the HTML quality report. A second run reuses the data and
the deployed version when nothing changed, so it starts serving within seconds.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from twotower.db import Database
from twotower.errors import DemoError, InputError
from twotower.settings import Settings

__all__ = ["DemoOptions", "pick_users", "run_demo"]

STATE_FILE = "demo.json"  # under the data dir: what the last demo generated and deployed
TOKEN_HOURS = 12


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


@dataclass
class Picked:
    user_id: uuid.UUID
    taste: str  # the dominant taste (synthetic: the planted taste id) or tag of the user's likes
    share: float  # of the user's likes
    likes: int


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
            from twotower.ingest.movielens import MovieLensFiles

            MovieLensFiles.find(o.movielens)  # a clear NotFound before anything else
            with self.step("data") as (status, done):
                with db.connection() as conn:
                    row = conn.execute("SELECT count(*) FROM videos WHERE source = 'movielens'").fetchone()
                if row and row[0]:
                    done["text"] = (
                        f"data: reusing the {row[0]:,} MovieLens videos already imported "
                        "(`twotower import movielens` re-imports)"
                    )
                else:
                    from twotower.ingest.service import import_movielens

                    status.update(f"importing MovieLens from {o.movielens} ...")
                    report = import_movielens(db, o.movielens)
                    v, d = report.videos, report.decisions
                    videos = v.inserted if v else 0
                    decisions = d.inserted if d else 0
                    done["text"] = (
                        f"data: MovieLens imported from {o.movielens}: {videos:,} videos, {decisions:,} decisions"
                    )
            self._other_data(db, "SELECT count(*) FROM videos WHERE source <> %s", ("movielens",))
            return {"source": "movielens"}
        from twotower.synth import SynthConfig, generate
        from twotower.synth import validate as validate_synth

        config = SynthConfig(videos=o.videos, users=o.users, decisions=o.decisions, seed=o.seed)
        validate_synth(config)
        with self.step("data") as (status, done):
            with db.connection() as conn:
                row = conn.execute(
                    "SELECT count(*), (SELECT count(*) FROM user_video_decisions d JOIN videos w ON w.id = d.video_id "
                    "                  WHERE w.source = %s AND w.raw->'synthetic'->>'seed' = %s) "
                    "FROM videos v WHERE v.source = %s AND v.raw->'synthetic'->>'seed' = %s",
                    (config.source, str(config.seed), config.source, str(config.seed)),
                ).fetchone()
            have_videos, have_decisions = (int(x) for x in row) if row else (0, 0)
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
        self._other_data(db, "SELECT count(*) FROM videos WHERE NOT (source = %s AND raw->'synthetic'->>'seed' = %s)",
                         (config.source, str(config.seed)))  # fmt: skip
        return {"source": "synthetic", **asdict(config)}

    def _other_data(self, db: Database, count_sql: LiteralString, params: tuple[Any, ...]) -> None:
        with db.connection() as conn:
            row = conn.execute(count_sql, params).fetchone()
        if row and row[0]:
            self.err.print(
                f"note: the database also holds {row[0]:,} other videos (earlier runs with other data); the model "
                "is trained on them too: use another TWOTOWER_DATA_DIR to keep demos apart",
                markup=False,
                highlight=False,
            )

    def signature(self, db: Database) -> list[Any]:
        """Changes when videos or swipes change: then the model is retrained."""
        with db.connection() as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM videos), (SELECT max(updated_at)::text FROM videos), "
                "(SELECT count(*) FROM user_video_decisions), (SELECT max(created_at)::text FROM user_video_decisions)"
            ).fetchone()
        return list(row) if row else []

    def model(self, db: Database, data: dict[str, Any]) -> str:
        """The version to show: the one deployed by an earlier demo on the same data, else a new deploy."""
        from twotower.registry.versions import active_version

        key = {"data": data, "signature": self.signature(db), "epochs": self.options.epochs}
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
        from twotower.errors import DeployFailed, EmbeddingAlerts, QualityGateFailed
        from twotower.monitor import Thresholds
        from twotower.pipeline.deploy import STAGE_TEXT, DeployOptions, DeployResult
        from twotower.pipeline.deploy import deploy as run_deploy
        from twotower.registry.store import open_store
        from twotower.train.run import TrainOptions

        settings = self.settings
        version = time.strftime("demo-%Y%m%d-%H%M%S")
        trained = self.data_dir / "trained"
        # no refit on the whole training period: it would double the training time for a small gain here
        train = TrainOptions(epochs=self.options.epochs, seed=self.options.seed, output_dir=trained, version=version,
                             refit=False)  # fmt: skip
        options = DeployOptions(
            train=train, gate=True, tolerance=settings.deploy_tolerance, keep_generations=settings.keep_generations,
            cache_dir=self.settings.model_cache_dir, thresholds=Thresholds.from_settings(settings),
            webhook_url=settings.monitor_webhook_url,
        )  # fmt: skip
        store = open_store(settings)

        def attempt(opts: DeployOptions, title: str) -> DeployResult:
            with self.step(title) as (status, done):
                clock = {"stage": "", "t": time.perf_counter()}

                def on_stage(stage: str) -> None:
                    self._stage_done(clock)
                    clock["stage"], clock["t"] = stage, time.perf_counter()
                    text = STAGE_TEXT.get(stage, stage)
                    if stage == "train" and opts.model_dir is not None:
                        text = f"using the model trained above ({opts.model_dir.name})"
                    status.update(f"{stage}: {text} ...")

                result = run_deploy(db, store, opts, on_stage=on_stage, on_progress=lambda m: status.update(m + " ..."))
                self._stage_done(clock)
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

    def _stage_done(self, clock: dict[str, Any]) -> None:
        from twotower.pipeline.deploy import STAGE_TEXT

        if clock["stage"]:
            took = time.perf_counter() - clock["t"]
            text = STAGE_TEXT.get(clock["stage"], clock["stage"])
            self.out.print(f"   [dim]{clock['stage']:<9}[/] {text} [dim]({took:.1f}s)[/]")

    # -- the API -------------------------------------------------------------------------------------------
    @contextmanager
    def server(self) -> Iterator[tuple[str, threading.Event, Any]]:
        import uvicorn

        from twotower.serve import create_app

        port = self.options.port
        with self.step("API") as (_, done):
            config = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=port, log_level="error",
                                    access_log=False, lifespan="on")  # fmt: skip
            server = uvicorn.Server(config)
            # an Event, not Thread.join: a join interrupted by Ctrl-C can report a running thread as finished
            stopped = threading.Event()

            def run() -> None:
                try:
                    server.run()
                finally:
                    stopped.set()

            threading.Thread(target=run, name="twotower-demo-api", daemon=True).start()
            deadline = time.monotonic() + 120
            while not server.started:
                if stopped.is_set():
                    check_port(port)  # the usual cause; otherwise:
                    raise DemoError("the API server did not start (see the messages above)")
                if time.monotonic() > deadline:
                    server.should_exit = True
                    raise DemoError("the API server did not start within 120 s")
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port}"
            done["text"] = f"API serving on {url}"
        try:
            yield url, stopped, server
        finally:
            server.should_exit = True
            stopped.wait(timeout=30)  # the app's shutdown detaches from the database before the demo does

    def recommendations(self, db: Database, url: str, version: str) -> str:
        """Three users with different tastes: their likes, and the API's five recommendations, with a reason.
        Returns a token for the first one (for trying the API by hand)."""
        import httpx

        secret = self.settings.jwt_secret
        assert secret is not None
        with self.step("users") as (_, done), db.direct() as conn:
            synthetic = _has_synthetic(conn)
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
                token = _token(user.user_id, secret.get_secret_value(), self.settings)
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
        likes, nopes, top_tags = _profile(conn, user.user_id)
        taste = f"are planted taste {user.taste}" if synthetic else f"carry the tag {escape(repr(user.taste))}"
        self.out.print(
            f"\n[bold]user {n}[/] {user.user_id}: {likes:,} likes, {nopes:,} nopes; {user.share:.0%} of the likes "
            f"{taste}"
        )
        self.out.print("  top liked tags: " + ", ".join(f"{t} ({c})" for t, c in top_tags), markup=False)
        recs = answer.get("recommendations", [])
        algorithm = answer.get("algorithm", "?")
        ids = [uuid.UUID(r["id"]) for r in recs]
        because = _because(conn, user.user_id, ids, version) if algorithm == "two_tower" else {}
        tastes = _tastes(conn, ids) if synthetic else {}
        table = Table(title=f"recommendations ({algorithm}, version {answer.get('model_version') or '-'})",
                      title_justify="left")  # fmt: skip
        table.add_column("#", justify="right")
        table.add_column("title")
        table.add_column("maker")
        table.add_column("tags")
        if synthetic:
            table.add_column("taste", justify="right")
        table.add_column("score", justify="right")
        table.add_column("why")
        for i, rec in enumerate(recs, 1):
            vid = uuid.UUID(rec["id"])
            if algorithm == "popularity":
                why = "popular"
            elif vid in because:
                title, cosine = because[vid]
                why = f"like “{escape(title)}” (cos {cosine:.2f})"
            else:
                why = algorithm
            tags = ", ".join(rec.get("tags", [])[:4])
            row = [str(i), escape(rec.get("title", "")), escape(rec.get("maker") or "-"), escape(tags)]
            if synthetic:
                t = tastes.get(vid, "?")
                row.append(f"[green]{t}[/]" if t == user.taste else t)
            row += [f"{rec.get('similarity_score', 0):.3f}", why]
            table.add_row(*row)
        self.out.print(table)

    def evaluation(self, db: Database, version: str) -> None:
        """The model and the baselines on the temporal split: the same report as ``twotower evaluate``."""
        from twotower.evaluation import render_slices, render_table
        from twotower.registry.store import fetch, open_store
        from twotower.train.evaluate import evaluate_model

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
        from twotower.monitor import Thresholds, monitor_version
        from twotower.monitor.report import write_report

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
        from twotower.ingest.movielens import MovieLensFiles

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
            assert settings.jwt_secret is not None
            out.print(f"  sign in with: {_service_token(settings.jwt_secret.get_secret_value(), settings)}",
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


# -- helpers -------------------------------------------------------------------------------------------------
def check_port(port: int) -> None:
    """Raise a clear InputError when 127.0.0.1:``port`` cannot be listened on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise InputError(f"port {port} is in use; pass --port") from None


def _token(user: uuid.UUID, secret: str, settings: Settings) -> str:
    import jwt

    claims: dict[str, Any] = {"sub": str(user), "aud": settings.jwt_audience, "role": "authenticated",
                              "exp": int(time.time()) + TOKEN_HOURS * 3600}  # fmt: skip
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def _service_token(secret: str, settings: Settings) -> str:
    """A service-role token for the console (the demo's own secret; the same lifetime as the users' tokens)."""
    import jwt

    claims: dict[str, Any] = {"role": "service_role", "exp": int(time.time()) + TOKEN_HOURS * 3600}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def _has_synthetic(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM videos WHERE raw ? 'synthetic')").fetchone()
    return bool(row and row[0])


_TASTE_SQL = """
WITH likes AS (
    SELECT d.user_id, d.video_id FROM user_video_decisions d WHERE d.decision_type = 'like'
), total AS (
    SELECT user_id, count(*) AS n FROM likes GROUP BY 1 HAVING count(*) >= %(min_likes)s
), per AS (
    {per}
)
SELECT p.user_id, p.k, p.n, t.n FROM per p JOIN total t USING (user_id)
ORDER BY p.n::float8 / t.n * ln(1 + p.n) DESC, p.user_id
LIMIT 20000
"""
_PER_TASTE = """SELECT l.user_id, v.raw->'synthetic'->>'taste' AS k, count(*) AS n
    FROM likes l JOIN videos v ON v.id = l.video_id WHERE v.raw ? 'synthetic' GROUP BY 1, 2"""
_PER_TAG = """SELECT l.user_id, t.name AS k, count(*) AS n
    FROM likes l JOIN video_tags vt ON vt.video_id = l.video_id JOIN tags t ON t.id = vt.tag_id GROUP BY 1, 2"""


def pick_users(conn: psycopg.Connection[Any], n: int, *, synthetic: bool, min_likes: int = 5) -> list[Picked]:
    """``n`` users whose likes are dominated by different tastes (synthetic: the planted taste of the liked
    videos; otherwise their most liked tag), preferring strong and well-supported preferences."""
    sql = _TASTE_SQL.format(per=_PER_TASTE if synthetic else _PER_TAG)
    rows = conn.execute(sql, {"min_likes": min_likes}).fetchall()
    picked: list[Picked] = []
    users: set[uuid.UUID] = set()
    tastes: set[str] = set()
    for user_id, k, count, total in rows:
        if user_id in users or k in tastes:
            continue
        picked.append(Picked(user_id, str(k), int(count) / int(total), int(total)))
        users.add(user_id)
        tastes.add(k)
        if len(picked) == n:
            return picked
    for user_id, k, count, total in rows:  # fewer tastes than users asked for: any other well-defined users
        if len(picked) == n:
            break
        if user_id not in users:
            picked.append(Picked(user_id, str(k), int(count) / int(total), int(total)))
            users.add(user_id)
    return picked


def _profile(conn: psycopg.Connection[Any], user: uuid.UUID) -> tuple[int, int, list[tuple[str, int]]]:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE decision_type = 'like'), count(*) FILTER (WHERE decision_type = 'nope') "
        "FROM user_video_decisions WHERE user_id = %s",
        (user,),
    ).fetchone()
    likes, nopes = (int(x) for x in row) if row else (0, 0)
    tags = conn.execute(
        "SELECT t.name, count(*) FROM user_video_decisions d JOIN video_tags vt ON vt.video_id = d.video_id "
        "JOIN tags t ON t.id = vt.tag_id WHERE d.user_id = %s AND d.decision_type = 'like' "
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
        (user,),
    ).fetchall()
    return likes, nopes, [(str(t), int(c)) for t, c in tags]


def _because(
    conn: psycopg.Connection[Any], user: uuid.UUID, videos: list[uuid.UUID], version: str
) -> dict[uuid.UUID, tuple[str, float]]:
    """For each recommended video, the user's liked video nearest to it (cosine of the version's item
    embeddings) and that cosine."""
    if not videos:
        return {}
    rows = conn.execute(
        """SELECT DISTINCT ON (r.id) r.id, v.title, 1 - (er.embedding <=> el.embedding)
           FROM unnest(%s::uuid[]) AS r (id)
           JOIN video_embeddings er ON er.video_id = r.id AND er.model_version = %s
           JOIN user_video_decisions d ON d.user_id = %s AND d.decision_type = 'like'
           JOIN video_embeddings el ON el.video_id = d.video_id AND el.model_version = %s
           JOIN videos v ON v.id = d.video_id
           ORDER BY r.id, er.embedding <=> el.embedding, v.title""",
        (videos, version, user, version),
    ).fetchall()
    return {r[0]: (str(r[1]), float(r[2])) for r in rows}


def _tastes(conn: psycopg.Connection[Any], videos: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    rows = conn.execute(
        "SELECT id, raw->'synthetic'->>'taste' FROM videos WHERE id = ANY(%s)",
        (videos,),
    ).fetchall()
    return {r[0]: str(r[1]) for r in rows}
