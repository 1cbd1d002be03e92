"""Every option of every config group composes, and the pieces it names can be built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from recarena import checks
from recarena.checks import check_config, compatible_losses
from recarena.errors import ConfigError
from recarena.paths import CONF_DIR
from recarena.run import split_job
from recarena.schema import Schema
from tests.conftest import compose_config

GROUPS = [
    "data", "split", "model", "loss", "optimizer", "scheduler", "trainer", "logger", "callbacks", "eval", "family",
    "experiment",
]
SCHEMA = Schema(n_users=7, n_items=5, rating_low=1.0, rating_high=5.0, global_mean=3.5)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"{group}={option}"], tmp_path)
    if group not in ("family", "experiment"):  # those two are global presets, not a config key
        assert cfg[group] is not None or option == "none"
    # Every key of the run's config resolves (no dangling interpolation); Hydra's own node is Hydra's business.
    from omegaconf import OmegaConf

    OmegaConf.to_container(split_job(cfg)[0], resolve=True)


def _leaves(node: object, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every scalar or list in a plain (dict/list) config."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, object] = {}
    for key, value in node.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@pytest.mark.parametrize("family", options("family"))
def test_every_family_preset_value_reaches_the_run(family: str, tmp_path: Path) -> None:
    """Each value a preset sets is the composed run's value: a preset composed before train.yaml's own keys lost
    its batch_size (twotower_inbatch's chosen 4096 trained at the default 1024)."""
    from omegaconf import OmegaConf

    preset = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "family" / f"{family}.yaml"))
    preset.pop("defaults", None)
    cfg = compose_config([f"family={family}"], tmp_path)
    for key, value in _leaves(preset).items():
        assert OmegaConf.select(cfg, key) == value, key


@pytest.mark.parametrize("model", options("model"))
def test_every_model_builds_with_its_default_loss(model: str, tmp_path: Path) -> None:
    cfg = compose_config([f"model={model}"], tmp_path)
    check_config(cfg)  # the model's default loss is compatible by construction
    module = instantiate(
        cfg.model, schema=SCHEMA, loss=instantiate(cfg.loss), optimizer=instantiate(cfg.optimizer), _convert_="all"
    )
    users, items = torch.tensor([0, 1, 6]), torch.tensor([4, 0, 2])
    assert module(users, items).shape == (3,)
    assert module.score_all(users).shape == (3, SCHEMA.n_items)


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_optimizers_and_schedulers_step(optimizer: str, scheduler: str, tmp_path: Path) -> None:
    cfg = compose_config([f"optimizer={optimizer}", f"scheduler={scheduler}"], tmp_path)
    factory = instantiate(cfg.optimizer)
    module = instantiate(cfg.model, schema=SCHEMA, loss=instantiate(cfg.loss), optimizer=factory, _convert_="all")
    kwargs = {}
    if module.sparse_embeddings(factory):
        from recarena.optim import split_sparse_dense

        kwargs["sparse_params"] = split_sparse_dense(module)
    opt = factory(module.parameters(), **kwargs)
    sched = instantiate(cfg.scheduler)(opt, total_steps=10)
    batch = {"users": torch.tensor([0, 1]), "items": torch.tensor([1, 2]), "ratings": torch.tensor([5.0, 1.0])}
    before = module.item_factors.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        module.loss_fn(module, batch).backward()
        opt.step()
        sched.step()
    after = module.item_factors.weight.detach()
    changed = (after != before).any(dim=1)
    assert changed[1] and changed[2]
    if optimizer == "sparse_adam":  # lazy updates: untouched rows stay exactly as they were
        assert not changed[[0, 3, 4]].any()


def test_incompatible_loss_lists_the_compatible_ones(tmp_path: Path) -> None:
    cfg = compose_config(["model=popularity", "loss=mse"], tmp_path)
    with pytest.raises(ConfigError, match=r"model=popularity cannot be trained with loss=mse.*Losses that fit"):
        check_config(cfg)
    assert compatible_losses(cfg.model._target_) == ["none"]


def test_mf_refuses_held_out_users(tmp_path: Path) -> None:
    cfg = compose_config(["model=mf", "split=users"], tmp_path)
    with pytest.raises(ConfigError, match="split=users"):
        check_config(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_without_gpu_fails_clearly(tmp_path: Path) -> None:
    cfg = compose_config(["trainer=gpu"], tmp_path)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        check_config(cfg)


def test_bf16_on_a_gpu_without_bfloat16_names_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A V100 (compute capability 7.0) has no bfloat16 arithmetic; torch only emulates it, slowly."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    cfg = compose_config(["trainer=gpu", "trainer.precision=bf16-mixed"], tmp_path)
    with pytest.raises(ConfigError, match=r"trainer.precision=bf16-mixed: Tesla V100-SXM2-16GB has no bfloat16"):
        check_config(cfg)
    check_config(compose_config(["trainer=gpu", "trainer.precision=16-mixed"], tmp_path))  # what it suggests


def test_compile_without_a_cpu_compiler_names_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"compile=true on the CPU needs a C\+\+ compiler \(g\+\+ is not on PATH\)"):
        check_config(compose_config(["trainer=cpu", "compile=true"], tmp_path))
    check_config(compose_config(["trainer=cpu", "compile=false"], tmp_path))  # eager needs none


def test_compile_on_a_gpu_without_triton_names_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils._triton

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    with pytest.raises(ConfigError, match=r"compile=reduce-overhead on a GPU needs Triton"):
        check_config(compose_config(["trainer=gpu", "compile=reduce-overhead"], tmp_path))


def test_compile_where_torch_compile_is_unsupported_names_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(ConfigError, match=r"compile=reduce-overhead: torch.compile is not supported here"):
        check_config(compose_config(["compile=reduce-overhead"], tmp_path))


def test_unknown_dataset_lists_known(tmp_path: Path) -> None:
    cfg = compose_config(["data.name=ml-5m"], tmp_path)
    with pytest.raises(ConfigError, match="ml-100k.*ml-1m"):
        check_config(cfg)


def test_mf_scores_are_its_biased_dot_products(tmp_path: Path) -> None:
    """score_all = user_factors @ item_factors.T + biases (before the sigmoid), and ranks like forward()."""
    cfg = compose_config(["model=mf"], tmp_path)
    mf = instantiate(cfg.model, schema=SCHEMA, loss=instantiate(cfg.loss), _convert_="all")
    torch.nn.init.normal_(mf.user_bias.weight)
    torch.nn.init.normal_(mf.item_bias.weight)
    users = torch.arange(SCHEMA.n_users)
    expected = mf.user_factors.weight @ mf.item_factors.weight.T + mf.user_bias.weight + mf.item_bias.weight.T
    scores = mf.score_all(users)
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.allclose(mf.user_embeddings(users) @ mf.item_embeddings().T, expected, atol=1e-6)
    batch = {"users": users.repeat_interleave(SCHEMA.n_items), "items": torch.arange(SCHEMA.n_items).repeat(SCHEMA.n_users)}
    assert torch.allclose(mf.score(batch, batch["items"]).view(SCHEMA.n_users, -1), expected, atol=1e-6)
    items = torch.arange(SCHEMA.n_items)
    ratings = mf(users.repeat_interleave(SCHEMA.n_items), items.repeat(SCHEMA.n_users)).view(SCHEMA.n_users, -1)
    assert torch.equal(scores.argsort(dim=1), ratings.argsort(dim=1))
