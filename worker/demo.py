"""`instructloop demo`: the whole InstructGPT loop on the embedded default, with simulated labelers.

demonstrations -> SFT -> K outputs per prompt -> rankings -> reward model -> PPO ->
A/B comparisons of PPO against SFT -> win rate. Every stage goes through the real database,
queue and worker (a `instructloop worker` subprocess claims each run); the terminal shows a
progress bar per run. Afterwards the web app shows the lineage, the plots and the win rate.

The profiles trade quality for time: `cpu` finishes in about 12 minutes on a 2-core laptop with
SmolLM2-135M-Instruct, `gpu` uses real sizes, `tiny` uses a tiny model built from a config
(for tests). Run: `instructloop demo [--profile cpu|gpu|tiny]`. The `hh` profile (HHDemo) runs the
loop on public human feedback instead of simulated labelers, judged by a gold reward model.

What the cpu profile can show, and how it was chosen. A 135M model does not learn two-digit
addition or comparing numbers from a few hundred examples and episodes, so on those prompts SFT
and PPO are wrong alike. What it can learn within the budget is to follow the instructions about
form. The simulated demonstrators, like real ones, are imperfect: 60% of their demonstrations wrap
the answer in chatty filler that breaks the prompt's length limit ("Here is my answer: 137. I hope
that this is helpful to you today."). SFT copies that habit; the simulated labelers' rankings
prefer answers within the limit, so the reward model learns it and PPO drops the filler. The
labelers' preference is the same function throughout (worker.simulate.preference_score), the
final comparison uses only test-split prompts, and those labelers answer at random 32% of the
time (the paper's 73% agreement), so the win rate they report is lower than the true one.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app import conversation
from app.config import Settings
from app.db import make_engine, make_sessionmaker, write_session
from app.models import Comparison, Completion, ModelVersion, Prompt, RunMetric, RunStatus, Task, TaskKind, TrainingRun
from app.services import estimates, evaluation, imports, projects, registry, runs
from runconfig import PRESETS
from worker import gold, simulate

GUIDELINES = """# Demo guidelines

Answer exactly what is asked, and no more.

- If the prompt limits the length ("in one word", "in at most 5 words"), stay within it.
- Give the correct answer to arithmetic and yes/no questions.
- Do not refuse questions that are harmless.
"""


@dataclass
class Profile:
    name: str
    model: str
    """Hub id, folder or the embedded default; 'tiny' builds a tiny model in the data folder."""
    prompts: int
    labelers: int = 4
    agreement: float = 0.73
    padding_rate: float = 0.4
    """Share of demonstrations that ignore the length limit (see worker.simulate.SimulatedLabeler)."""
    valid_fraction: float = 0.1
    test_fraction: float = 0.25
    """Held-out shares of the prompts: valid for the SFT and reward models' held-out figures, test
    for the final comparison of PPO with SFT."""
    prompt_kinds: tuple[str, ...] = simulate.DEMO_PROMPT_KINDS
    unseen_test: bool = True
    """The test split asks in wordings, topics and colours that no train or valid prompt uses
    (simulate.demo_prompts(held_out=True)); off, it is a random share of one pool."""
    tiny_sizes: dict[str, int] = field(default_factory=dict)
    """Sizes for trainer.tiny.make_tiny_model when model == 'tiny'."""
    k: int = 4
    sft: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    generate: dict[str, Any] = field(default_factory=dict)
    ppo: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)


PROFILES = {
    "cpu": Profile(
        # About 12 minutes on a 2-core laptop; 40% of the prompts are held out for the final
        # comparison, so that it has more than 100 A/B pairs (see the header for the padding rate).
        name="cpu",
        model="smollm2-135m-instruct",
        prompts=400,
        padding_rate=0.6,
        test_fraction=0.4,
        sft=PRESETS["cpu"]["sft"],
        reward=PRESETS["cpu"]["reward"],
        generate=PRESETS["cpu"]["generate"],
        ppo=PRESETS["cpu"]["ppo"],
        evaluate=PRESETS["cpu"]["evaluate"],
    ),
    "gpu": Profile(
        name="gpu",
        model="smollm2-135m-instruct",
        prompts=2000,
        labelers=8,
        sft=PRESETS["gpu"]["sft"],
        reward=PRESETS["gpu"]["reward"],
        generate=PRESETS["gpu"]["generate"],
        ppo=PRESETS["gpu"]["ppo"],
        evaluate=PRESETS["gpu"]["evaluate"],
    ),
    "tiny": Profile(
        # A 2-layer model learns neither addition nor comparing numbers, so this demo keeps the
        # instructions it can learn (subject, length, no filler). With the yes/no questions in, PPO
        # found answers the reward model over-rated ("." or "yes." to anything): win rate 38-79%.
        name="tiny",
        model="tiny",
        prompts=240,
        labelers=3,
        agreement=0.9,
        padding_rate=0.5,
        prompt_kinds=("sentence", "fruit"),
        unseen_test=False,  # a 2-layer model is not expected to generalise to unseen topics
        sft=dict(
            epochs=12, batch_size=16, micro_batch_size=16, learning_rate=3e-3, max_length=64, max_prompt_length=48
        ),
        generate=dict(k=4, temperature=1.0, max_new_tokens=12, limit=160, batch_size=160),
        reward=dict(epochs=3, batch_size=8, micro_batch_size=8, learning_rate=5e-4, max_length=64),
        # kl_coef 0.2, not 0.05: the stronger penalty keeps the tiny policy nearer its SFT model.
        ppo=dict(
            total_episodes=1024,
            rollout_batch_size=64,
            minibatch_size=16,
            forward_batch_size=64,
            ppo_epochs=4,
            max_new_tokens=12,
            learning_rate=5e-4,
            kl_coef=0.2,
            temperature=1.0,
        ),
        evaluate=dict(num_prompts=64, temperature=1.0, max_new_tokens=12, batch_size=64),
    ),
}


@dataclass
class HHProfile:
    """The real-data profile: human demonstrations, preferences and prompts instead of simulated labelers."""

    name: str
    model: str
    valid_fraction: float = 0.2
    test_fraction: float = 0.2
    """Shares of the loop's prompts held out: valid for the reward model's held-out pairs (and SFT's
    held-out loss), test for the comparison of PPO with SFT."""
    gold_valid_fraction: float = 0.1
    """Share of the gold pairs held out for the gold reward model's own accuracy."""
    sft: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    ppo: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)


_HH_CPU_REWARD = dict(
    epochs=1,
    batch_size=8,
    micro_batch_size=8,
    learning_rate=3e-5,
    max_length=128,
    max_steps=30,  # 240 of the pairs and rankings: the two reward models are most of the CPU budget
    precision="bf16",
)
HH_PROFILES = {
    # Sized for a quiet 2-core CPU (30 minutes): SmolLM2-135M-Instruct; hh-rlhf helpful-base (the
    # shared 1,554 test pairs) and 100 OpenAssistant trees; SFT sequences cut to 192 tokens (PPO's and
    # evaluate's prompts, like SFT's, to their last 128), the
    # reward models' to 128 and 240 pairs each, answers to 32 tokens; PPO trains LoRA adapters
    # (rank 16) on the policy and the value model. These settings were set from the CPU budget
    # before any figure was seen, and not changed after looking at held-out figures.
    "hh": HHProfile(
        name="hh",
        model="smollm2-135m-instruct",
        sft=dict(
            epochs=1,
            batch_size=8,
            micro_batch_size=8,
            learning_rate=5e-5,
            max_length=192,
            max_prompt_length=128,
            precision="bf16",
        ),
        reward=_HH_CPU_REWARD,
        ppo=dict(
            total_episodes=192,
            rollout_batch_size=16,
            minibatch_size=8,
            forward_batch_size=16,
            ppo_epochs=2,
            max_new_tokens=32,
            max_prompt_length=128,  # as SFT's: at full length (median 149, p90 366 tokens) a step took 2.5 min
            learning_rate=1e-4,  # LoRA adapters take a larger step than full weights
            warmup_steps=0,
            kl_coef=0.05,
            temperature=0.9,
            lora_r=16,
            value_lora_r=16,
            precision="bf16",
        ),
        # The oldest 100 test prompts: hh-rlhf ones (imported first), the gold judge's own domain.
        evaluate=dict(
            num_prompts=100, temperature=0.7, top_p=0.95, max_new_tokens=32, max_prompt_length=128, batch_size=25
        ),
    ),
    # The same data at the GPU sizes: longer sequences and answers, more epochs and episodes, full weights.
    "hh-gpu": HHProfile(
        name="hh-gpu",
        model="smollm2-135m-instruct",
        sft=dict(
            epochs=3, batch_size=32, micro_batch_size=32, learning_rate=2e-5, max_length=512, max_prompt_length=384
        ),
        reward=dict(epochs=2, batch_size=32, micro_batch_size=16, learning_rate=1e-5, max_length=512),
        ppo=dict(
            total_episodes=4096,
            rollout_batch_size=64,
            minibatch_size=16,
            forward_batch_size=64,
            ppo_epochs=4,
            max_new_tokens=128,
            max_prompt_length=384,
            learning_rate=1e-5,
            kl_coef=0.05,
            temperature=0.9,
        ),
        evaluate=dict(
            num_prompts=150, temperature=0.7, top_p=0.95, max_new_tokens=128, max_prompt_length=384, batch_size=75
        ),
    ),
}


@dataclass
class DemoResult:
    project_id: int
    seconds: float
    figures: dict[str, Any]
    run_ids: dict[str, int]
    timings: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    """Each run kind's (seconds taken, seconds the run form estimated beforehand or None)."""


Echo = Callable[[str], None]


class Demo:
    def __init__(
        self, settings: Settings, profile: Profile, *, echo: Echo = print, seed: int = 0, start_worker: bool = True
    ):
        self.settings, self.profile, self.echo, self.seed = settings, profile, echo, seed
        self.engine = make_engine(settings.db_url)
        self.sessions = make_sessionmaker(self.engine)
        self.start_worker = start_worker
        self.worker: subprocess.Popen | None = None
        self.run_ids: dict[str, int] = {}
        self._said_fp32 = False
        self.timings: dict[str, tuple[float, float | None]] = {}
        """Each run's (seconds taken, seconds estimated beforehand or None)."""
        self.estimate_bases: dict[str, str] = {}
        """What each run's estimate was based on (or why there was none), as the run form says it."""

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> DemoResult:
        started = time.monotonic()
        if self.start_worker:
            self._start_worker()
        try:
            project_id = self._create_project()
            self._label(project_id, TaskKind.demonstration, "writing demonstrations")
            base = self._base_model(project_id)
            sft = self._train("sft", project_id, [base], self.profile.sft)
            self._train("generate", project_id, [sft], self.profile.generate)
            self._label(project_id, TaskKind.ranking, "ranking outputs")
            reward = self._train("reward", project_id, [sft], self.profile.reward)
            ppo = self._train("ppo", project_id, [sft, reward], self.profile.ppo)
            self._train("evaluate", project_id, [ppo, sft, reward], self.profile.evaluate)
            self._label(project_id, TaskKind.comparison, "comparing PPO with SFT")
            figures = self._figures()
        finally:
            self._stop_worker()
        result = DemoResult(project_id, time.monotonic() - started, figures, dict(self.run_ids), dict(self.timings))
        self._report(result)
        return result

    def _create_project(self) -> int:
        name = f"demo {time.strftime('%Y-%m-%d %H:%M:%S')}"
        p = self.profile
        valid, test = p.valid_fraction, p.test_fraction
        if p.unseen_test:
            n_test = round(p.prompts * test)
            records = [{"prompt": q, "reference": r} for q, r in self._demo_prompts(p.prompts - n_test, False)]
            records += [{"prompt": q, "reference": r, "split": "test"} for q, r in self._demo_prompts(n_test, True)]
            valid, test = valid / (1 - test), 0.0  # the import draws train/valid for the seen ones only
        else:
            records = [{"prompt": q, "reference": r} for q, r in self._demo_prompts(p.prompts)]
        data = "\n".join(json.dumps(r) for r in records).encode()
        with write_session(self.engine) as session:
            project = projects.create_project(
                session,
                projects.ProjectSettings(
                    name=name, k=self.profile.k, overlap=1, description="Created by `instructloop demo`."
                ),
                guidelines_md=GUIDELINES,
            )
            result = imports.run_import(
                session,
                project,
                data,
                filename="demo.jsonl",
                valid_fraction=valid,
                test_fraction=test,
                create_tasks=True,
            )
            counts = result.preview.split_counts
            self.echo(
                f"Project '{name}' (id {project.id}): {len(result.prompts)} prompts "
                f"({counts['train']} train, {counts['valid']} valid, {counts['test']} test)"
            )
            return project.id

    def _demo_prompts(self, n: int, held_out: bool | None = None) -> list[tuple[str, str]]:
        return simulate.demo_prompts(n, seed=self.seed, kinds=self.profile.prompt_kinds, held_out=held_out)

    def _base_model(self, project_id: int) -> int:
        source = self.profile.model
        if source == "tiny":
            from trainer.tiny import make_tiny_model

            texts = [p for pair in simulate.demo_prompts(400, seed=99) for p in pair]
            source = str(
                make_tiny_model(self.settings.data_dir / "models" / "tiny-demo", texts=texts, **self.profile.tiny_sizes)
            )
        with write_session(self.engine) as session:
            return registry.register_base(session, source, project_id=project_id).id

    def _label(self, project_id: int, kind: TaskKind, what: str) -> None:
        bar = ProgressBar(self.echo, f"labelers: {what}")
        report = simulate.simulate(
            self.engine,
            project_id,
            labelers=self.profile.labelers,
            agreement=self.profile.agreement,
            kinds=[kind],
            seed=self.seed,
            padding_rate=self.profile.padding_rate,
            default_lease_seconds=self.settings.lease_seconds,
            on_submit=lambda _kind, n: bar.update(n, None, ""),
        )
        bar.done(f"{report.submitted.get(kind.value, 0)} {kind.value}s, {report.skipped} skipped")

    def _train(self, kind: str, project_id: int, inputs: list[int], config: dict[str, Any], name: str = "") -> int:
        """Queues a run, follows it to the end, and returns the model version it produced (or the run
        id). `name` keys its run id and timing when two runs of one kind are made (default: the kind)."""
        name = name or kind
        config = {**config, "seed": self.seed}
        if config.get("precision") == "bf16" and not estimates.gpu_present() and not estimates.cpu_has_bf16():
            # The cpu profile's bf16 autocast is 1.5x faster than fp32 on a CPU with bf16 instructions
            # and about 10x slower on one that emulates them: as the run form does, take fp32 there.
            config["precision"] = "fp32"
            if not self._said_fp32:
                self.echo("This CPU has no bf16 instructions: the runs train in fp32 (slower than the README's times).")
                self._said_fp32 = True
        with write_session(self.engine) as session:
            # What the run form would say for these models (app.services.estimates; None when it has
            # nothing comparable to go on).
            said = estimates.estimate_run(session, project_id, kind, config, input_model_ids=inputs)
            estimate, self.estimate_bases[name] = said.seconds, said.basis
            run = runs.create_run(session, project_id=project_id, kind=kind, config=config, input_model_ids=inputs)
            run_id = run.id
        self.run_ids[name] = run_id
        bar = ProgressBar(self.echo, f"{name} run {run_id}")
        while True:
            with self.sessions() as session:
                run = session.get_one(TrainingRun, run_id)
                status, step, total, error = run.status, run.progress_step, run.progress_total, run.error
                last = _last_metrics(session, run_id)
            bar.update(step, total, last)
            if status in runs.FINAL:
                break
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError(
                    f"The worker exited (code {self.worker.returncode}) while run {run_id} was {status}."
                )
            time.sleep(0.5)
        if status != RunStatus.succeeded:
            bar.done(status.value)
            raise RuntimeError(f"The {kind} run {run_id} {status.value}: {error}")
        with self.sessions() as session:
            version = session.scalar(select(ModelVersion).where(ModelVersion.run_id == run_id))
        self.timings[name] = (bar.elapsed(), estimate)
        bar.done("done" + (f" -> model version {version.id}" if version else ""), estimate)
        return version.id if version else run_id

    def _figures(self) -> dict[str, Any]:
        with self.sessions() as session:

            def metric(kind: str, name: str, pick: int) -> float | None:
                rows = session.scalars(
                    select(RunMetric.value)
                    .where(RunMetric.run_id == self.run_ids[kind], RunMetric.name == name)
                    .order_by(RunMetric.step)
                ).all()
                return rows[pick] if rows else None

            evaluate_run = session.get_one(TrainingRun, self.run_ids["evaluate"])
            return {
                "sft_valid_loss_start": metric("sft", "valid_loss", 0),
                "sft_valid_loss_end": metric("sft", "valid_loss", -1),
                "reward_accuracy": metric("reward", "valid_accuracy", -1),
                "ppo_score_start": metric("ppo", "score", 0),
                "ppo_score_end": metric("ppo", "score", -1),
                "ppo_kl_end": metric("ppo", "kl", -1),
                "reward_model_win_rate": (evaluate_run.summary.get("reward_model") or {}).get("win_rate"),
                "labeler_win_rate": evaluation.labeler_win_rate(session, evaluate_run.id),
                **_form_judgements(session, evaluate_run),
            }

    def _report(self, result: DemoResult) -> None:
        f = result.figures
        self.echo("")
        self.echo(f"Finished in {result.seconds / 60:.1f} minutes (project {result.project_id}).")
        self.echo(f"  SFT held-out loss      {_fmt(f['sft_valid_loss_start'])} -> {_fmt(f['sft_valid_loss_end'])}")
        self.echo(f"  reward-model accuracy  {_fmt(f['reward_accuracy'])} on held-out pairs")
        self.echo(
            f"  PPO reward-model score {_fmt(f['ppo_score_start'])} -> {_fmt(f['ppo_score_end'])}, "
            f"KL {_fmt(f['ppo_kl_end'])}"
        )
        win = f["labeler_win_rate"]
        if win.get("n"):
            low, high = win["ci95"]
            self.echo(
                f"  PPO vs SFT (labelers)  win rate {win['win_rate']:.1%} [95% CI {low:.1%}, {high:.1%}, "
                f"bootstrap over prompts] over {win['n']} comparisons of {win['prompts']} prompts; "
                f"{win['ties']} ties, {win['identical']} of them identical answers"
            )
        if f["reward_model_win_rate"] is not None:
            self.echo(f"  PPO vs SFT (reward model) win rate {f['reward_model_win_rate']:.1%}")
        if f.get("per_template"):
            self.echo("  What the win rate is made of (the same test comparisons):")
            unseen = (
                " (test prompts in wordings, topics and colours never trained on)" if self.profile.unseen_test else ""
            )
            self.echo(f"    labelers, per prompt template{unseen}:")
            for template, rate in f["per_template"].items():
                self.echo(f"      {template:<10} {_rate(rate)}")
            self.echo(f"    the labelers' preference without their noise    {_rate(f['preference_judge'])}")
            self.echo(f"    the same, planted filler taken out of both answers {_rate(f['without_filler_judge'])}")
            self.echo(f'    "fewer words wins"                                {_rate(f["fewer_words_judge"])}')
        self.echo(f"Open the dashboard to see the lineage and the plots: /admin/projects/{result.project_id}")

    # -- the worker -------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        env = {**os.environ, "DATABASE_URL": self.settings.db_url, "INSTRUCTLOOP_DATA_DIR": str(self.settings.data_dir)}
        log = open(self.settings.data_dir / "demo-worker.log", "ab")  # noqa: SIM115 (lives as long as the worker)
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "instructloop", "worker", "--poll-interval", "0.5"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.echo(f"Started a worker (pid {self.worker.pid}); its log: {self.settings.data_dir / 'demo-worker.log'}")

    def _stop_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            return
        self.worker.send_signal(signal.SIGTERM)
        try:
            self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.worker.kill()


class HHDemo(Demo):
    """The loop on public human feedback: SFT on OpenAssistant's human replies, a reward model on
    hh-rlhf's and OpenAssistant's human preferences, PPO on their human prompts; PPO and SFT then
    answer held-out hh-rlhf prompts and a gold reward model, trained in a project of its own on
    hh-rlhf pairs the loop never sees (worker.gold), judges them."""

    def __init__(self, settings: Settings, profile: HHProfile, data: Path, **kwargs):
        super().__init__(settings, profile, **kwargs)  # type: ignore[arg-type]
        self.hh: HHProfile = profile
        self.data = data

    def run(self) -> DemoResult:
        started = time.monotonic()
        hh_lines = gold.read_lines(self.data / gold.HH_FILE)
        loop_lines, gold_lines = gold.split_hh(hh_lines)
        if self.start_worker:
            self._start_worker()
        try:
            loop = self._project("hh demo", loop_lines, oasst=True)
            judge = self._project("hh gold judge", gold_lines, oasst=False)
            base = self._register_base(loop)
            sft = self._train("sft", loop, [base], self.hh.sft)
            reward = self._train("reward", loop, [sft], self.hh.reward)
            gold_rm = self._train("reward", judge, [self._register_base(judge)], self.hh.reward, name="gold reward")
            ppo = self._train("ppo", loop, [sft, reward], self.hh.ppo)
            self._train("evaluate", loop, [ppo, sft, reward], self.hh.evaluate)
            self.echo("Scoring the held-out pairs and the answers with the reward model and the gold judge...")
            figures = self._hh_figures(loop, reward, gold_rm, ppo, sft)
        finally:
            self._stop_worker()
        result = DemoResult(loop, time.monotonic() - started, figures, dict(self.run_ids), dict(self.timings))
        self._hh_report(result)
        return result

    def _project(self, what: str, hh_lines: list[str], *, oasst: bool) -> int:
        name = f"{what} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        gold_project = not oasst
        with write_session(self.engine) as session:
            project = projects.create_project(
                session,
                projects.ProjectSettings(
                    name=name, k=4, overlap=1, description="Created by `instructloop demo --profile hh`."
                ),
                guidelines_md="# hh demo\n\nPublic human feedback (hh-rlhf, OpenAssistant); no labelers.",
            )
            valid = self.hh.gold_valid_fraction if gold_project else self.hh.valid_fraction
            test = 0.0 if gold_project else self.hh.test_fraction
            files = [(gold.HH_FILE, "hh-rlhf", "\n".join(hh_lines).encode())]
            if oasst:
                files.append((gold.OASST_FILE, "oasst", (self.data / gold.OASST_FILE).read_bytes()))
            notes = []
            for filename, fmt, data in files:
                result = imports.run_import(
                    session, project, data, filename=filename, fmt=fmt, valid_fraction=valid, test_fraction=test
                )
                counts = result.preview.split_counts
                notes.append(
                    f"{filename}: {len(result.prompts)} prompts ({counts['train']} train, {counts['valid']} valid, "
                    f"{counts['test']} test), {imports.feedback_summary(result.feedback)}"
                )
            self.echo(f"Project '{name}' (id {project.id}):")
            for note in notes:
                self.echo(f"  {note}")
            return project.id

    def _register_base(self, project_id: int) -> int:
        with write_session(self.engine) as session:
            return registry.register_base(session, self.hh.model, project_id=project_id).id

    def _hh_figures(self, loop: int, reward: int, gold_rm: int, ppo: int, sft: int) -> dict[str, Any]:
        from trainer import modeling

        def load(version_id: int):
            with self.sessions() as session:
                location = registry.weights_location(session.get_one(ModelVersion, version_id))
            source = modeling.resolve_model_source(location, self.settings.data_dir)
            model = modeling.ScalarHeadModel.from_pretrained(source, device=modeling.pick_device())
            model.eval()
            return model, modeling.load_tokenizer(source)

        with self.sessions() as session:
            pairs = gold.held_out_pairs(session, loop)
            answers = gold.evaluate_answers(session, self.run_ids["evaluate"], (ppo, sft))
            evaluate_run = session.get_one(TrainingRun, self.run_ids["evaluate"])
            proxy = (evaluate_run.summary or {}).get("reward_model") or {}

            def metric(name: str, metric: str, pick: int) -> float | None:
                rows = session.scalars(
                    select(RunMetric.value)
                    .where(RunMetric.run_id == self.run_ids[name], RunMetric.name == metric)
                    .order_by(RunMetric.step)
                ).all()
                return rows[pick] if rows else None

            figures: dict[str, Any] = {
                "reward_run_valid_accuracy": metric("reward", "valid_accuracy", -1),
                "gold_run_valid_accuracy": metric("gold reward", "valid_accuracy", -1),
                "ppo_score_start": metric("ppo", "score", 0),
                "ppo_score_end": metric("ppo", "score", -1),
                "ppo_kl_end": metric("ppo", "kl", -1),
                "proxy_win_rate": proxy.get("win_rate"),
            }
        # Both judges read sequences cut as they were trained (the profile's reward max_length).
        length = self.hh.reward.get("max_length")
        model, tokenizer = load(reward)
        figures["reward"] = gold.judge_pairs(model, tokenizer, pairs, length)
        del model
        model, tokenizer = load(gold_rm)
        figures["gold_on_held_out"] = gold.judge_pairs(model, tokenizer, pairs, length)
        figures["gold_win_rate"] = gold.gold_win_rate(model, tokenizer, answers, length)
        del model
        figures["longer_wins"] = gold.longer_wins(pairs)
        figures["lengths"] = dict(zip(("ppo", "sft"), gold.answer_lengths(answers), strict=True))
        return figures

    def _hh_report(self, result: DemoResult) -> None:
        f = result.figures
        r, g, lw = f["reward"], f["gold_on_held_out"], f["longer_wins"]
        self.echo("")
        self.echo(f"Finished in {result.seconds / 60:.1f} minutes (project {result.project_id}).")
        self.echo(
            f"  Held-out hh-rlhf pairs: {r['pairs']}, of which {r['chosen_shorter_pairs']} have the shorter answer chosen."
        )
        self.echo("                         accuracy  chosen-shorter  balanced  prefers longer")
        for label, x in (("reward model (loop)", r), ("gold judge", g), ('"longer wins"', lw)):
            self.echo(
                f"  {label:<22} {_pct(x['accuracy'])}   {_pct(x['accuracy_chosen_shorter'])}          "
                f"{_pct(x['balanced_accuracy'])}    {_pct(x['prefers_longer'])}"
            )
        self.echo(
            f"  (the reward run's own held-out accuracy, OpenAssistant rankings included: "
            f"{_fmt(f['reward_run_valid_accuracy'])}; the gold run's on its own held-out pairs: "
            f"{_fmt(f['gold_run_valid_accuracy'])})"
        )
        self.echo(
            f"  PPO reward-model score {_fmt(f['ppo_score_start'])} -> {_fmt(f['ppo_score_end'])}, "
            f"KL {_fmt(f['ppo_kl_end'])}"
        )
        self.echo(
            f"  PPO vs SFT (gold judge)       {_rate(f['gold_win_rate'])}, {f['gold_win_rate']['identical']} identical"
        )
        if f["proxy_win_rate"] is not None:
            self.echo(f"  PPO vs SFT (the loop's reward model, the training signal) {f['proxy_win_rate']:.1%}")
        for who in ("ppo", "sft"):
            x = f["lengths"][who]
            self.echo(
                f"  {who.upper()} answers: {x['mean_words']:.1f} words on average, {x['ended']:.0%} ended by the model"
            )


def _last_metrics(session, run_id: int) -> str:
    row = session.execute(
        select(RunMetric.step).where(RunMetric.run_id == run_id).order_by(RunMetric.step.desc()).limit(1)
    ).first()
    if row is None:
        return ""
    values = session.execute(
        select(RunMetric.name, RunMetric.value).where(RunMetric.run_id == run_id, RunMetric.step == row.step)
    ).all()
    shown = [
        f"{n}={v:.3g}" for n, v in values if n in ("loss", "valid_loss", "accuracy", "valid_accuracy", "score", "kl")
    ]
    return " ".join(shown)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class ProgressBar:
    """One terminal line per stage, redrawn in place on a terminal, printed at the end otherwise."""

    def __init__(self, echo: Echo, label: str, width: int = 28):
        self.echo, self.label, self.width = echo, label, width
        self.tty = sys.stdout.isatty() and echo is print
        self.started = time.monotonic()
        self.line = ""

    def update(self, step: int, total: int | None, info: str) -> None:
        if total:
            filled = int(self.width * min(step, total) / total)
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {step}/{total}"
        else:
            bar = f"{step}"
        self.line = f"{self.label:<34} {bar} {info}"
        if self.tty:
            sys.stdout.write("\r\033[K" + self.line)
            sys.stdout.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def done(self, note: str, estimate: float | None = None) -> None:
        guess = "" if estimate is None else f"; estimated {estimate:.0f}s"
        line = f"{self.label:<34} {note} ({self.elapsed():.0f}s{guess})"
        if self.tty:
            sys.stdout.write("\r\033[K")
        self.echo(line)


def run_demo(
    settings: Settings,
    profile: str = "cpu",
    *,
    echo: Echo = print,
    seed: int = 0,
    start_worker: bool = True,
    data: Path | None = None,
) -> DemoResult:
    """`data`: the folder of the public data the hh profiles read (default ../shared/data beside the checkout)."""
    if profile not in PROFILES and profile not in HH_PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; use one of {', '.join([*PROFILES, *HH_PROFILES])}.")
    if profile in HH_PROFILES:
        folder = gold.check_data_folder(Path(data) if data is not None else gold.default_data_folder())
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    # The queue shuffles each labeler's view of the outputs with the global random; seeded, the
    # simulated labelers see the same views each time and a demo run is reproducible on the CPU.
    random.seed(seed)
    if profile in HH_PROFILES:
        return HHDemo(settings, HH_PROFILES[profile], folder, echo=echo, seed=seed, start_worker=start_worker).run()
    return Demo(settings, PROFILES[profile], echo=echo, seed=seed, start_worker=start_worker).run()


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.1%}"


def _rate(w: dict[str, Any]) -> str:
    if not w.get("n"):
        return "no comparisons"
    low, high = w["ci95"]
    return f"{w['win_rate']:.1%} [{low:.1%}, {high:.1%}] over {w['n']} ({w['ties']} ties)"


def _form_judgements(session, evaluate_run: TrainingRun) -> dict[str, Any]:
    """How much of PPO's win over SFT is form: the labelers' win rate per prompt template, and the
    test pairs judged again by the preference without noise, by it with the planted filler taken
    out of both answers (a gain that survives is more than dropping filler), and by "fewer words
    wins" (what a judge that only counts words would say)."""
    if len(evaluate_run.input_model_ids or []) < 2:
        return {}
    candidate = evaluate_run.input_model_ids[0]
    rows = session.execute(
        select(
            Prompt.id,
            Prompt.messages,
            Prompt.reference,
            Comparison.choice,
            Comparison.a_completion_id,
            Comparison.b_completion_id,
        )
        .join(Task, Task.prompt_id == Prompt.id)
        .join(Comparison, Comparison.task_id == Task.id)
        .where(Task.source_run_id == evaluate_run.id, Task.kind == TaskKind.comparison)
    ).all()
    ids = {c for row in rows for c in (row.a_completion_id, row.b_completion_id)}
    completions = {c.id: c for c in session.scalars(select(Completion).where(Completion.id.in_(ids)))} if ids else {}
    labelers: dict[str, list[tuple[Hashable, float]]] = {}
    judges: dict[str, list[tuple[Hashable, float]]] = {"preference": [], "without_filler": [], "fewer_words": []}
    for row in rows:
        a, b = completions[row.a_completion_id], completions[row.b_completion_id]
        mine, theirs = (a, b) if a.model_version_id == candidate else (b, a)
        prompt = conversation.last_user_turn(row.messages)
        same = mine.text.strip() == theirs.text.strip()
        choice = row.choice.value
        chose_mine = (choice == "a") == (mine is a)
        labeler_score = 0.5 if same or choice == "tie" else float(chose_mine)
        labelers.setdefault(simulate.prompt_template(prompt), []).append((row.id, labeler_score))

        # Each judge scores both answers; identical answers and equal scores are ties.
        pairs = {
            "preference": (mine.text, theirs.text),
            "without_filler": (simulate.without_filler(mine.text), simulate.without_filler(theirs.text)),
        }
        for name, (x, y) in pairs.items():
            sx, sy = (simulate.preference_score(prompt, t, row.reference) for t in (x, y))
            judges[name].append((row.id, 0.5 if same or sx == sy else float(sx > sy)))
        nx, ny = len(mine.text.split()), len(theirs.text.split())
        judges["fewer_words"].append((row.id, 0.5 if same or nx == ny else float(nx < ny)))
    # The identical answers the run did not pose are ties for every judge, as in the labelers' figure.
    ties = evaluation.unposed_ties(evaluate_run, [o for outcomes in labelers.values() for o in outcomes])
    messages = dict(
        session.execute(select(Prompt.id, Prompt.messages).where(Prompt.id.in_({p for p, _ in ties}))).all()
    )
    for prompt_id, tie in ties:
        template = (
            simulate.prompt_template(conversation.last_user_turn(messages[prompt_id]))
            if prompt_id in messages
            else "other"
        )
        labelers.setdefault(template, []).append((prompt_id, tie))
        for outcomes in judges.values():
            outcomes.append((prompt_id, tie))
    return {
        "per_template": {t: evaluation.win_rate(o) for t, o in sorted(labelers.items())},
        **{f"{name}_judge": evaluation.win_rate(o) for name, o in judges.items()},
    }
