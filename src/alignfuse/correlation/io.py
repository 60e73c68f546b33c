"""Saving and loading fitted correlation estimators: safetensors + JSON, never a pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from alignfuse.correlation.cca import CCA
from alignfuse.correlation.deep import DCCA, DCCAE
from alignfuse.correlation.kcca import KCCA, _KernelFeatures
from alignfuse.correlation.pls import PLS
from alignfuse.correlation.procrustes import Procrustes
from alignfuse.correlation.scm import SCM
from alignfuse.errors import CheckpointError

CLASSES: dict[str, type[Any]] = {
    c.__name__: c for c in (CCA, KCCA, PLS, Procrustes, SCM, DCCA, DCCAE)
}


def _state(model: Any) -> dict[str, torch.Tensor]:
    st: dict[str, torch.Tensor] = {}
    if isinstance(model, DCCA):
        st.update({f"nets.{k}": v for k, v in model.nets_.state_dict().items()})
        st.update({f"cca.{k}": v for k, v in _state(model.cca_).items()})
        st.update(
            {"mu_x": model._mu_x, "sd_x": model._sd_x, "mu_y": model._mu_y, "sd_y": model._sd_y}
        )
        return st
    if isinstance(model, SCM):
        st.update({f"cca.{k}": v for k, v in _state(model.cca_).items()})
        st.update({"lr_x.w": model._lr_x[0], "lr_x.b": model._lr_x[1]})
        st.update({"lr_y.w": model._lr_y[0], "lr_y.b": model._lr_y[1]})
        return st
    if isinstance(model, Procrustes):
        w, scale = model._torch
        return {
            "rotation": w,
            "scale": scale.reshape(()),
            "mean_x": model._mean_x,
            "mean_y": model._mean_y,
        }
    wx, wy = model._torch
    st = {"wx": wx, "wy": wy, "mean_x": model._mean_x, "mean_y": model._mean_y}
    if isinstance(model, KCCA):
        for v, f in (("x", model._fx), ("y", model._fy)):
            st[f"{v}.landmarks"], st[f"{v}.map"] = f.landmarks, f.map
            st[f"{v}.gamma"] = torch.tensor(f.gamma, dtype=torch.float64)
        st["correlations"] = torch.as_tensor(model.correlations_)
    return st


def save_estimator(model: Any, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (class, arguments) into ``folder``."""
    name = type(model).__name__
    if name not in CLASSES:
        raise TypeError(f"cannot save {name}: not a correlation estimator")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in _state(model).items()}
    save_file(tensors, str(folder / "model.safetensors"))
    meta = {"class": name, "params": model.get_params()}
    if isinstance(model, SCM):
        meta["n_classes"] = model.n_classes_
    if isinstance(model, DCCA):
        meta["params"]["hidden"] = list(model.hidden)
    (folder / "model.json").write_text(json.dumps(meta, indent=1))
    return folder


def load_estimator(folder: str | Path) -> Any:
    """Rebuild an estimator saved by :func:`save_estimator` (outputs are tensors)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "model.json").read_text())
        cls = CLASSES[meta["class"]]
        st = load_file(str(folder / "model.safetensors"))
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{str(folder)!r} holds no readable saved estimator: {err}") from None
    params = dict(meta["params"])
    if "hidden" in params:
        params["hidden"] = tuple(params["hidden"])
    model = cls(**params)
    if issubclass(cls, DCCA):
        model._mu_x, model._sd_x = st["mu_x"], st["sd_x"]
        model._mu_y, model._sd_y = st["mu_y"], st["sd_y"]
        nets = model._build(
            st["mu_x"].shape[0], st["mu_y"].shape[0], st["mu_x"].dtype, st["mu_x"].device
        )
        nets.load_state_dict({k[5:]: v for k, v in st.items() if k.startswith("nets.")})
        model.nets_ = nets.eval()
        cca = CCA(model.n_components, model.reg, model.reg)
        _restore_linear(cca, {k[4:]: v for k, v in st.items() if k.startswith("cca.")})
        model.cca_ = cca
        return model
    if cls is SCM:
        cca = CCA(model.n_components, model.reg_x, model.reg_y)
        _restore_linear(cca, {k[4:]: v for k, v in st.items() if k.startswith("cca.")})
        model.cca_ = cca
        model._lr_x = (st["lr_x.w"], st["lr_x.b"])
        model._lr_y = (st["lr_y.w"], st["lr_y.b"])
        model.n_classes_ = meta["n_classes"]
        return model
    if cls is Procrustes:
        model._torch = (st["rotation"], st["scale"])
        model._mean_x, model._mean_y = st["mean_x"], st["mean_y"]
        model.rotation_, model.scale_ = st["rotation"], float(st["scale"])
        return model
    _restore_linear(model, st)
    if cls is KCCA:
        for v in ("x", "y"):
            f = _KernelFeatures.__new__(_KernelFeatures)
            f.kernel, f.degree, f.coef0 = model.kernel, model.degree, model.coef0
            f.gamma, f.landmarks, f.map = (
                float(st[f"{v}.gamma"]),
                st[f"{v}.landmarks"],
                st[f"{v}.map"],
            )
            setattr(model, f"_f{v}", f)
        model.correlations_ = st["correlations"]
    return model


def _restore_linear(model: Any, st: dict[str, torch.Tensor]) -> None:
    model._torch = (st["wx"], st["wy"])
    model._mean_x, model._mean_y = st["mean_x"], st["mean_y"]
    model.x_weights_, model.y_weights_ = st["wx"], st["wy"]
    if not isinstance(model, KCCA):
        model.mean_x_, model.mean_y_ = st["mean_x"], st["mean_y"]
