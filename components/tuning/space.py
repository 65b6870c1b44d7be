"""Search spaces: typed YAML files in `configs/search/`, validated before any trial starts.

    spec = load_search("configs/search/default.yaml")   # ValueError naming the file and field

A file names a base training config (encoders, head, fixed training settings), the mode
(`frozen`: fusion + heads on the cached embeddings; `finetune`: every trial trains the
encoders too), the metric, the budget, ASHA's settings and the parameters to search. Each
parameter is a constant or one of

    {type: choice, values: [...]}
    {type: loguniform, low: 1e-4, high: 1e-2}
    {type: uniform, low: 0.0, high: 0.2}
    {type: int, low: 4, high: 30}            # inclusive; `log: true` samples on a log scale

`lambda_kl` is sampled only for trials whose fusion is `modality_attention` (a conditional
space, Optuna's define-by-run API); `lr_text` / `lr_image` only in `finetune` mode.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from components.models.fusion import fusion_reads_pooled_text
from components.training.trainer import TrainConfig, _deep_update, load_train_config
from components.yaml_files import describe_errors, read_yaml_mapping

FUSION_NAMES = ("text", "image", "concat", "late", "cross_attention", "modality_attention")
METRICS = ("r_at_p95", "f1_macro")  # the trainer's per-epoch validation means


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Choice(_Strict):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


class _Range(_Strict):
    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class LogUniform(_Range):
    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)


class Uniform(_Range):
    type: Literal["uniform"]
    low: float
    high: float


class IntRange(_Range):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False


def _kind(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("type") if v.get("type") in ("choice", "loguniform", "uniform", "int") else None
    if isinstance(v, BaseModel):
        return getattr(v, "type", None)
    return "constant" if isinstance(v, int | float | str) and not isinstance(v, bool) else None


# A plain value (the parameter is fixed) or a distribution, told apart by its `type`.
Param = Annotated[
    Annotated[Choice, Tag("choice")]
    | Annotated[LogUniform, Tag("loguniform")]
    | Annotated[Uniform, Tag("uniform")]
    | Annotated[IntRange, Tag("int")]
    | Annotated[int | float | str, Tag("constant")],
    Discriminator(
        _kind,
        custom_error_type="invalid_parameter",
        custom_error_message="expected a number, a string, or a mapping with type: choice | loguniform | uniform | int",
    ),
]


class Parameters(_Strict):
    """What a trial varies. Unset parameters keep the base config's value."""

    fusion: Param = Field(default_factory=lambda: Choice(type="choice", values=list(FUSION_NAMES)))
    lambda_kl: Param | None = None  # modality_attention only
    lr_head: Param | None = None
    lr_text: Param | None = None  # finetune only
    lr_image: Param | None = None  # finetune only
    weight_decay: Param | None = None
    warmup_share: Param | None = None
    epochs: Param | None = None
    batch_size: Param | None = None
    head_hidden: Param | None = None  # model.head.hidden
    head_dropout: Param | None = None  # model.head.dropout
    image_dropout: Param | None = None  # training.image_dropout (modality dropout)


class Asha(_Strict):
    grace_period: int = Field(2, ge=1)  # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(3, gt=1)  # keep the top 1/reduction_factor at each rung
    brackets: int = Field(1, ge=1)


class Resources(_Strict):
    cpus_per_trial: float = Field(1, gt=0)
    # "auto": one GPU per trial when fine-tuning on a machine (or cluster) that has one; else none.
    gpus_per_trial: float | Literal["auto"] = "auto"


class SearchSpec(_Strict):
    base: str | None = None  # training config to start from (relative to the search file); None = defaults
    overrides: dict[str, Any] = Field(default_factory=dict)  # deep-merged into the base: {model: ..., training: ...}
    mode: Literal["frozen", "finetune"] = "frozen"
    metric: Literal["r_at_p95", "f1_macro"] = "r_at_p95"
    trials: int = Field(40, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)  # None: as many as the resources allow
    time_budget_s: float | None = Field(None, gt=0)  # stop starting trials after this long
    seed: int = 0  # Optuna's sampler
    asha: Asha = Asha()
    resources: Resources = Resources()
    retrain_on_train_validation: bool = False  # retrain the best config on train + validation
    # Second stage: the best trials (most of them cut short by ASHA, or sampled with few epochs)
    # train again for the full epoch budget; the best on validation of all is the search's result.
    full_budget_top: int = Field(2, ge=0)
    # The second stage's own values of some parameters (e.g. the recipe's epochs, batch size and
    # head width where the first stage searched cheap ones): {} = the largest epochs, else as searched.
    full_budget: dict[str, Any] = Field(default_factory=dict)
    # Configurations the search tries first (Optuna's enqueued trials), e.g. the hand-picked
    # recipe: the search then starts from what is known to work instead of from random points.
    start_points: list[dict[str, Any]] = Field(default_factory=list)
    keep_trial_models: bool = False  # keep every trial's model folder (default: only the best)
    # A finished trial's Ray worker takes the next trial (torch, the encoders' code and the dataset
    # stay loaded). false: every trial starts a fresh worker wherever a CPU is free, so that trials
    # spread over a cluster's nodes even while workers start slowly.
    reuse_actors: bool = True
    parameters: Parameters = Parameters()

    # Filled by load_search: the resolved base TrainConfig (as a dict) and the file's path.
    base_config: dict[str, Any] = Field(default_factory=dict)
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self):
        p = self.parameters
        if self.mode == "frozen":
            for name in ("lr_text", "lr_image"):
                if getattr(p, name) is not None:
                    raise ValueError(f"parameters.{name}: encoder learning rates are searched only with mode: finetune")
        for value in _values(p.fusion):
            if value not in FUSION_NAMES:
                raise ValueError(f"parameters.fusion: unknown fusion {value!r}; known: {list(FUSION_NAMES)}")
        if p.lambda_kl is not None and "modality_attention" not in _values(p.fusion):
            raise ValueError(
                "parameters.lambda_kl: only used by modality_attention, which parameters.fusion does not include"
            )
        names = set(Parameters.model_fields)
        for where, keys in [("full_budget", self.full_budget), *(("start_points", pt) for pt in self.start_points)]:
            unknown = sorted(set(keys) - names)
            if unknown:
                raise ValueError(f"{where}: unknown parameters {unknown}; known: {sorted(names)}")
        for point in self.start_points:
            searched = set(self.searched) - ({"lambda_kl"} if point.get("fusion") != "modality_attention" else set())
            if set(point) != searched:
                raise ValueError(
                    f"start_points: {point} must give exactly the searched parameters {sorted(searched)} "
                    "(lambda_kl only with fusion modality_attention)"
                )
        for name in ("epochs", "batch_size", "head_hidden"):
            for v in _bounds(getattr(p, name)):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ValueError(f"parameters.{name}: needs whole numbers >= 1 (got {v!r})")
        return self

    @property
    def fusions(self) -> list[str]:
        return [str(v) for v in _values(self.parameters.fusion)]

    @property
    def max_epochs(self) -> int:
        bounds = _bounds(self.parameters.epochs)
        return int(max(bounds)) if bounds else int(self.base_config["training"]["epochs"])

    @property
    def searched(self) -> dict[str, Any]:
        """The parameters that vary (name -> distribution)."""
        return {k: v for k, v in self.parameters if isinstance(v, Choice | LogUniform | Uniform | IntRange)}

    @property
    def fixed(self) -> dict[str, Any]:
        return {k: v for k, v in self.parameters if v is not None and k not in self.searched}


def _values(p: Any) -> list[Any]:
    if p is None:
        return []
    return list(p.values) if isinstance(p, Choice) else [p]


def _bounds(p: Any) -> list[Any]:
    if p is None:
        return []
    if isinstance(p, Choice):
        return list(p.values)
    if isinstance(p, LogUniform | Uniform | IntRange):
        return [p.low, p.high]
    return [p]


def load_search(path: str | Path) -> SearchSpec:
    """Read and validate a search-space file; every error names the file and the field.

    Also checks that the base config with each searched fusion is a valid training config.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "search space")
    try:
        spec = SearchSpec.model_validate({k: v for k, v in raw.items() if k not in ("base_config", "source")})
    except ValidationError as e:
        raise ValueError(f"{path}: invalid search space: {_errors(e)}") from None
    base = TrainConfig()
    if spec.base:
        base_path = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        base = load_train_config(base_path)  # raises "<base>: invalid training config: ..."
    try:
        base = TrainConfig.model_validate(_deep_update(base.model_dump(mode="json"), spec.overrides))
    except ValidationError as e:
        raise ValueError(f"{path}: invalid search space: overrides: {_errors(e)}") from None
    spec.base_config = base.model_dump(mode="json")
    spec.source = str(path)
    # Every fusion must make a valid config with the extreme values of the ranges.
    for fusion in spec.fusions:
        for pick in (0, -1):
            params = {
                "fusion": fusion,
                **{k: _bounds(v)[pick] for k, v in spec.parameters if k != "fusion" and v is not None},
            }
            try:
                build_train_config(spec, params)
            except ValidationError as e:
                raise ValueError(f"{path}: invalid search space: with fusion {fusion}: {_errors(e)}") from None
    return spec


def _errors(e: ValidationError) -> str:
    return describe_errors(e, skip=("choice", "loguniform", "uniform", "int", "constant"))


def build_train_config(spec: SearchSpec, params: dict[str, Any]) -> TrainConfig:
    """The full training config of one trial: the base, the mode, the metric and the trial's values."""
    raw = copy.deepcopy(spec.base_config)
    model, training = raw["model"], raw["training"]
    fusion = params.get("fusion", model["fusion"]["name"])
    if model["fusion"]["name"] != fusion:  # the base's fusion settings belong to its fusion only
        model["fusion"] = {"name": fusion}
    if not fusion_reads_pooled_text(fusion):  # no pooled text to extend: no lexical channel
        model["lexical"] = None
    if fusion == "modality_attention" and params.get("lambda_kl") is not None:
        model["fusion"]["lambda_kl"] = params["lambda_kl"]
    if params.get("head_hidden") is not None:
        model["head"]["hidden"] = params["head_hidden"]
    if params.get("head_dropout") is not None:
        model["head"]["dropout"] = params["head_dropout"]
    training["frozen"] = spec.mode == "frozen"
    training["monitor"] = spec.metric
    for name in (
        "lr_head",
        "lr_text",
        "lr_image",
        "weight_decay",
        "warmup_share",
        "epochs",
        "batch_size",
        "image_dropout",
    ):
        if params.get(name) is not None:
            training[name] = params[name]
    return TrainConfig.model_validate(raw)


class define_by_run:  # noqa: N801 - used like a function; a class so Ray can pickle the searcher
    """Optuna's define-by-run space: lambda_kl only for modality_attention; constants returned."""

    def __init__(self, spec: SearchSpec):
        self.searched, self.fixed = spec.searched, spec.fixed

    def __call__(self, trial) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        for name, dist in self.searched.items():
            if name != "lambda_kl":
                out[name] = _suggest(trial, name, dist)
        fusion = out.get("fusion", self.fixed.get("fusion"))
        if fusion == "modality_attention" and "lambda_kl" in self.searched:
            _suggest(trial, "lambda_kl", self.searched["lambda_kl"])
        consts = {k: v for k, v in self.fixed.items() if k != "lambda_kl" or fusion == "modality_attention"}
        return consts or None  # Ray merges the constants with the values suggested through `trial`


def _suggest(trial, name: str, dist) -> Any:
    if isinstance(dist, Choice):
        return trial.suggest_categorical(name, dist.values)
    if isinstance(dist, LogUniform):
        return trial.suggest_float(name, dist.low, dist.high, log=True)
    if isinstance(dist, Uniform):
        return trial.suggest_float(name, dist.low, dist.high)
    return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
