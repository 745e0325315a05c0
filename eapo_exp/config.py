"""Structured-config schemas, registered in Hydra's ConfigStore.

Every option file in `conf/<group>/` extends one of these schemas through its defaults
list (`- base_<name>`), so an unknown key or a value of the wrong type fails at startup
with Hydra's own message. Objects are built from `_target_` nodes with explicit
arguments; no object reads the global config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, OmegaConf

from eapo_exp.run_dirs import claim_dir, short_dirname


class Stage(str, Enum):
    """How far the pipeline runs; every stage runs (or reuses) the ones before it."""

    data = "data"
    expert = "expert"
    sft = "sft"
    preference = "preference"
    all = "all"
    # ChatRec: the data, then a chat LLM behind an OpenAI-compatible endpoint ranks the
    # candidates (no local model, no expert).
    chatrec = "chatrec"


# ---------------------------------------------------------------- paths
@dataclass
class PathsConfig:
    # Shared by every run and sweep job: raw data, converted models, fingerprinted artifacts.
    cache_dir: str = "${oc.env:EAPO_CACHE_DIR,.cache}"
    data_cache: str = "${paths.cache_dir}/data"
    model_cache: str = "${paths.cache_dir}/models"
    artifact_cache: str = "${paths.cache_dir}/artifacts"
    # Run and sweep directories go under <output_root>/runs and <output_root>/multirun.
    output_root: str = "outputs"


# ---------------------------------------------------------------- datasets
# conf/dataset/<name>.yaml: these keys, and `source`, the `_target_` node of a data source
# (eapo_exp/data/sources) with its constructor arguments.
@dataclass
class DatasetConfig:
    name: str = MISSING
    source: Any = MISSING
    item_noun: str = "item"
    k_core: int = 0
    history_len: int = 10
    min_history: int = 1
    num_negatives: int = 20
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    # Seeds candidate sampling; fixed across method seeds so every run ranks the same lists.
    sample_seed: int = 0


# ---------------------------------------------------------------- experts
@dataclass
class SASRecConfig:
    _target_: str = "eapo_exp.experts.SASRec"
    max_len: int = II("dataset.history_len")
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2


@dataclass
class GRU4RecConfig:
    _target_: str = "eapo_exp.experts.GRU4Rec"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.2


@dataclass
class CaserConfig:
    _target_: str = "eapo_exp.experts.Caser"
    max_len: int = II("dataset.history_len")
    hidden_size: int = 64
    num_horizontal: int = 16
    num_vertical: int = 4
    dropout: float = 0.2


@dataclass
class ExpertTrainingConfig:
    """How an expert is trained: eapo_exp.experts.training.train_expert takes exactly these
    (eapo_exp.training.settings builds and validates them from the `expert` node)."""

    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 3
    # Early stopping counts an epoch as better only when valid NDCG@5 rises by > min_delta.
    min_delta: float = 1e-3
    weight_decay: float = 0.0
    # Fraction of training samples the expert sees (paper Fig. 2c: 1.0 / 0.75 / 0.5).
    data_fraction: float = 1.0
    seed: int = 0


@dataclass
class ExpertConfig(ExpertTrainingConfig):
    name: str = MISSING
    model: Any = MISSING
    # False: a job that needs the expert fails at startup unless it is already cached.
    train_if_missing: bool = True


# ---------------------------------------------------------------- backbones
@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    modules_to_save: list[str] = field(default_factory=list)
    # model: the adapter branch runs in the base weights' dtype (float32 master weights
    # kept); float32: PEFT's own path, which upcasts every adapter input (lora_compute.py).
    compute_dtype: str = "model"


@dataclass
class SmolLM2LoaderConfig:
    _target_: str = "eapo_exp.backbones.SmolLM2Backbone"
    cache_dir: str = II("paths.model_cache")
    dtype: str = "auto"
    max_context: int = 2048
    # auto: grouped_bmm on a CPU, sdpa on a GPU (eapo_exp/backbones/attention.py).
    attn_implementation: str = "auto"


@dataclass
class TinyLoaderConfig:
    _target_: str = "eapo_exp.backbones.TinyBackbone"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_context: int = 1024
    vocab_size: int = 2000
    seed: int = 0
    attn_implementation: str = "auto"


@dataclass
class HFLoaderConfig:
    _target_: str = "eapo_exp.backbones.HFBackbone"
    name_or_path: str = MISSING
    dtype: str = "auto"
    device_map: str | None = None
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    max_context: int = 4096
    # auto: grouped_bmm on a CPU, sdpa on a GPU. auto, grouped_bmm, eager, sdpa and
    # flex_attention take the shared-prompt mask; other backends fall back to re-encoding
    # the prompt for every completion (a warning says so).
    attn_implementation: str | None = "auto"


@dataclass
class CompileConfig:
    # torch.compile every decoder layer (inductor, dynamic shapes) for training and
    # evaluation (eapo_exp/backbones/compile.py); its artefacts are cached in cache_dir.
    # Not read from TORCHINDUCTOR_CACHE_DIR: importing transformers sets that variable to
    # a /tmp default before this node resolves, which would send the artefacts there.
    # true, false or auto: compile on a CPU with AMX-BF16 only, where it pays end to end.
    enabled: Any = False
    cache_dir: str = "${paths.cache_dir}/inductor"


@dataclass
class BackboneConfig:
    name: str = MISSING
    loader: Any = MISSING
    lora: LoraConfig = field(default_factory=LoraConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)


# ---------------------------------------------------------------- prompts, training, evaluation
@dataclass
class HybridCurriculumConfig:
    # LLaRA's curriculum (item_repr=hybrid, SFT only): the share of hybrid prompts rises
    # linearly from start_share at the first step to 1 at ramp_fraction of the SFT steps.
    start_share: float = 0.0
    ramp_fraction: float = 1.0


@dataclass
class PromptConfig:
    # "all" or a list of template names (eapo_exp.data.prompts.TEMPLATES); one drawn per example.
    train_templates: list[str] = field(default_factory=lambda: ["all"])
    # "fixed:<name>" or "random" (drawn per sample, seeded).
    eval_template: str = "fixed:chronological"
    max_prompt_tokens: int = 768
    seed: int = 0
    # The backbone's chat template around the prompt: off (plain text), auto (when the
    # tokenizer has one), on (required). method=zero_shot sets auto.
    chat_template: str = "off"
    # title: items are their titles. hybrid (LLaRA): each title in the history and the
    # candidate list is followed by one slot holding the frozen expert's item embedding,
    # projected into the LM by a 2-layer MLP trained with LoRA during SFT.
    item_repr: str = "title"
    curriculum: HybridCurriculumConfig = field(default_factory=lambda: HybridCurriculumConfig())
    # hybrid only: the expert whose item embeddings fill the slots is `expert` trained on this
    # share of the training interactions; null: the β schedule's expert (expert.data_fraction).
    # Fixing it at 1.0 keeps one SFT model across an expert-quality sweep (Fig. 2c).
    item_expert_data_fraction: float | None = None


@dataclass
class LoopConfig:
    """The keys of every LoRA training node (train.sft, train.preference), each of which sets
    its own defaults below: eapo_exp.training.settings builds the loop's settings from them
    and validates them, at startup and in the stage."""

    max_train_samples: int = 0  # 0 = every training sample
    epochs: int = 1
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0  # <= 0: no clipping
    checkpoint_every: int = 50
    log_every: int = 10
    # Stop when the gradient norm is exactly 0 this many steps in a row (diverged); 0 = never.
    dead_gradient_steps: int = 5
    seed: int = II("seed")


@dataclass
class SFTConfig(LoopConfig):
    """LR: warmup then cosine decay (no `schedule` key)."""

    # False = zero-shot baseline: no training, same prompts and evaluation.
    enabled: bool = True
    max_train_samples: int = 2000
    grad_accum: int = 2
    lr: float = 3e-4
    warmup_ratio: float = 0.05


@dataclass
class PreferenceConfig(LoopConfig):
    # Rejected completions per prompt, drawn from the sample's non-target candidates.
    num_rejected: int = 3
    max_train_samples: int = 512
    batch_size: int = 2
    grad_accum: int = 4
    schedule: str = "constant"  # constant (paper B.2.2) | cosine
    checkpoint_every: int = 20
    log_every: int = 5
    reference_batch_size: int = 4
    # Training prompts whose final reward discrepancy is measured after training.
    analysis_samples: int = 128
    # Held-out preference diagnostics (eapo_exp/training/heldout.py): this many validation
    # samples, each target against all its other candidates, scored under the reference and
    # after training; 0 = off. heldout_every > 0 also scores them every that many steps.
    heldout_samples: int = 256
    heldout_every: int = 0


@dataclass
class TrainConfig:
    name: str = "default"
    sft: SFTConfig = field(default_factory=SFTConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)


@dataclass
class EvalConfig:
    name: str = "default"
    # How candidates are ranked: a `_target_` node naming a row of
    # eapo_exp.evaluation.modes.EVAL_MODES, with its constructor arguments (conf/eval/*.yaml).
    mode: Any = MISSING
    splits: list[str] = field(default_factory=lambda: ["valid", "test"])
    # Samples per split, drawn once with subset_seed so every method ranks the same lists.
    max_samples: int = 500
    subset_seed: int = 0
    batch_size: int = 4
    write_predictions: bool = True
    # Reuse the stored result when the same model was already evaluated the same way.
    reuse_cached: bool = True
    # High-preference negatives = the expert's top-k non-target candidates (error analysis).
    high_preference_k: int = 3
    # Fold the LoRA adapter into the weights before scoring (a copy loaded for evaluation
    # only): one matmul per adapted layer instead of the adapter branch beside it. Scores
    # move by the merged weights' rounding: in bf16 on cpu_long's SFT model, a median 1.4% of
    # a candidate's log-prob, HR@1 0.070 -> 0.068 on 500 samples. false: the adapter branch.
    merge_lora: bool = True


# ---------------------------------------------------------------- ChatRec
@dataclass
class ChatRecConfig:
    """A chat LLM behind an OpenAI-compatible endpoint (method=chatrec). The API key is read
    from the environment variable named by api_key_env, never from the config."""

    _target_: str = "eapo_exp.chatrec.ChatEndpoint"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""  # the endpoint's model name (transformers serve: the served path)
    temperature: float = 0.0
    max_tokens: int = 512
    concurrency: int = 4
    timeout: float = 120.0  # seconds per request
    # Retries with exponential backoff on 408/409/429/5xx, timeouts and connection errors.
    retries: int = 4
    api_key_env: str = ""  # e.g. OPENAI_API_KEY; "" = no key (local servers)
    # Replies cached by (model, request): a rerun or a sweep sends nothing twice.
    cache_dir: str = "${paths.artifact_cache}/chatrec_replies"


# ---------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    name: str = "none"
    project: str = "eapo-exp"
    # online | offline | disabled; null: the user's W&B settings (WANDB_MODE, or the mode in
    # W&B's settings files), else offline (tracking.resolve_wandb_mode).
    mode: str | None = None
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- top level
@dataclass
class Config:
    stage: Stage = Stage.expert
    seed: int = 0
    torch_threads: int = 0  # 0 = torch default
    paths: PathsConfig = field(default_factory=PathsConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    dataset: Any = MISSING
    expert: Any = MISSING
    backbone: Any = MISSING
    loss: Any = MISSING
    beta_schedule: Any = MISSING
    train: Any = MISSING
    eval: Any = MISSING
    logger: Any = MISSING
    chatrec: ChatRecConfig = field(default_factory=ChatRecConfig)


def register_configs() -> None:
    OmegaConf.register_new_resolver("short_dirname", short_dirname, replace=True)
    OmegaConf.register_new_resolver("claim_dir", claim_dir, replace=True, use_cache=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="dataset", name="base_dataset", node=DatasetConfig)
    cs.store(group="expert", name="base_sasrec", node=ExpertConfig(name="sasrec",
                                                                   model=SASRecConfig()))
    cs.store(group="expert", name="base_gru4rec", node=ExpertConfig(name="gru4rec",
                                                                    model=GRU4RecConfig()))
    cs.store(group="expert", name="base_caser", node=ExpertConfig(name="caser",
                                                                  model=CaserConfig()))
    cs.store(group="logger", name="base_logger", node=LoggerConfig)
    cs.store(group="train", name="base_train", node=TrainConfig)
    cs.store(group="eval", name="base_eval", node=EvalConfig)
    cs.store(group="backbone", name="base_smollm2",
             node=BackboneConfig(name="smollm2_135m", loader=SmolLM2LoaderConfig()))
    cs.store(group="backbone", name="base_tiny",
             node=BackboneConfig(name="tiny", loader=TinyLoaderConfig()))
    cs.store(group="backbone", name="base_hf",
             node=BackboneConfig(name="hf", loader=HFLoaderConfig()))
