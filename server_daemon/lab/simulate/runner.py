"""`osfl-server simulate`: one simulated federation on real images, against its baselines.

Given a labelled dataset, a partition and K sites, :func:`run_simulation`:

1. loads the sites' pool and the real test set (:func:`load_sim_data`; never overlapping, and for
   Fashion-MNIST disjoint from the half that pretrained the generator), splits the pool over the
   sites (:mod:`.partitions`) and writes each site's images as an ImageFolder;
2. the one-shot method ``class-prompts`` (captions would need the edge model bundle pulled by every
   site first; not wired here yet): runs the federation for real
   (:class:`.federation.LoopbackFederation`: daemon on loopback, sites as `osfl-edge` processes,
   synthesis and training jobs, signed model fetched by a site), once per ``images_per_class``;
3. ``centralized``: the same classifier trained on the union of the sites' images;
4. ``fedavg``: FedAvg (Flower's strategy, in-process; see :mod:`.baselines`) for max(rounds) rounds
   of ``local_epochs``, the global model scored after each round in ``rounds``;
5. scores every model with ``osfl-edge evaluate`` on the same test ImageFolder (baselines are
   exported to ONNX by the server's exporter first), and writes results.md / results.json / plots.

Model selection never sees the test set: the one-shot model is the epoch best on held-out synthetic
images (the server's training job), centralized keeps the epoch best on a held-out 10% of the sites'
images, and FedAvg is reported after fixed round counts.
"""
from __future__ import annotations

import logging
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import datasets as ds
from .federation import LoopbackFederation, write_imagefolder
from .partitions import describe, partition
from .results import write_results

log = logging.getLogger(__name__)

ONESHOT_METHODS = ("class-prompts",)
METHODS = ONESHOT_METHODS + ("centralized", "fedavg")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "sd-fashion-tiny"


@dataclass(frozen=True)
class SimConfig:
    dataset: str = "fashion-mnist"
    partition: str = "dirichlet:0.5"
    sites: int = 10
    methods: tuple[str, ...] = ("class-prompts", "centralized", "fedavg")
    model_dir: str = str(DEFAULT_MODEL_DIR)
    images_per_class: tuple[int, ...] = (100,)
    rounds: tuple[int, ...] = (1, 10, 50)
    local_epochs: int = 1
    central_epochs: int = 10
    #: epochs of the server's training job on the synthetic set
    oneshot_epochs: int = 40
    arch: str = "tiny"
    image_size: int = 32
    batch_size: int = 64
    lr: float = 0.01
    augment: bool = False
    #: synthesis: DPM-Solver steps and guidance (the tiny model's settings, ALGORITHMS.md)
    steps: int = 20
    guidance: float = 3.0
    synthesis_batch: int = 100
    #: cap on all sites' images together (stratified sample of the pool); 0: all
    max_site_images: int = 0
    #: cap on the test images (stratified sample); 0: all
    max_test_images: int = 0
    #: domain text sent in the class-prompts payload (e.g. "handwritten digit"); "" for none
    domain: str = ""
    seed: int = 0
    title: str = ""
    #: torch/OpenMP threads for the baselines and the daemon's jobs (0: torch's default)
    threads: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; expected some of {', '.join(METHODS)}")


def _stratified(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    out = []
    classes = np.unique(labels)
    for c in classes:
        idx = np.flatnonzero(labels == c)
        k = int(round(n * len(idx) / len(labels)))
        out.extend(rng.choice(idx, min(k, len(idx)), replace=False))
    return np.sort(np.asarray(out, dtype=np.int64))


def _holdout_split(data: ds.LabelledImages, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(data.labels):
        idx = rng.permutation(np.flatnonzero(data.labels == c))
        test.extend(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.asarray(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(data)), test)
    return data.subset(train, data.name + "-sites"), data.subset(test, data.name + "-heldout")


def load_sim_data(name: str, seed: int = 0) -> tuple[ds.LabelledImages, ds.LabelledImages, np.ndarray | None]:
    """(sites' pool, test set, domain of each pool image or None) for a dataset name.

    ``fashion-mnist``: the half of train no pretraining saw / the official test set.
    ``fashion-mnist-subset``: the committed subset (sites' half / test). ``optdigits``, ``mnist``,
    ``imagefolder:DIR``: a seeded 70/30 split (held-out 30% judge). ``A+B``: domains A and B, each
    split 70/30, the pools and test sets concatenated (for ``by-domain``).
    """
    if "+" in name:
        parts = [load_sim_data(n, seed) for n in name.split("+")]
        classes = parts[0][0].classes
        if any(p[0].classes != classes for p in parts):
            raise ValueError(f"the domains of {name!r} do not share one label set")
        pool = ds.LabelledImages(np.concatenate([p[0].images for p in parts]),
                                 np.concatenate([p[0].labels for p in parts]), classes, name)
        test = ds.LabelledImages(np.concatenate([p[1].images for p in parts]),
                                 np.concatenate([p[1].labels for p in parts]), classes, name + "-test")
        domains = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)])
        return pool, test, domains
    if name == "fashion-mnist":
        train = ds.fashion_mnist("train")
        return train.subset(ds.pretrain_site_split(len(train))[1], "fashion-mnist-sites-half"), \
            ds.fashion_mnist("test"), None
    if name == "fashion-mnist-subset":
        return ds.fashion_mnist_subset("train"), ds.fashion_mnist_subset("test"), None
    pool, test = _holdout_split(ds.load(name), 0.3, seed)
    return pool, test, None


def _grey32(images: np.ndarray) -> np.ndarray:
    return ds.pad32(images) if images.shape[1] == 28 else images


def run_simulation(cfg: SimConfig, out_dir: str | Path, *, keep_work: bool = True) -> dict:
    """Run everything in ``cfg``; write results into ``out_dir``; return {"meta", "rows", "paths"}."""
    import torch

    from server_daemon.training import TrainingRecipe

    from .baselines import run_fedavg, to_tensor, train_centralized

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir).resolve()
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t_all = time.monotonic()
    pool, test, domains = load_sim_data(cfg.dataset, cfg.seed)
    keep = _stratified(pool.labels, cfg.max_site_images, cfg.seed)
    pool = pool.subset(keep)
    domains = domains[keep] if domains is not None else None
    test = test.subset(_stratified(test.labels, cfg.max_test_images, cfg.seed + 1))
    classes = list(pool.classes)
    parts = partition(pool.labels, cfg.sites, cfg.partition, seed=cfg.seed, domains=domains)
    site_names = [f"site-{k:02d}" for k in range(cfg.sites)]
    site_counts = describe(pool.labels, parts, len(classes))
    print(f"simulate: {cfg.dataset}, {len(pool)} site images over {cfg.sites} sites ({cfg.partition}), "
          f"{len(test)} test images", flush=True)
    for name, counts in zip(site_names, site_counts):
        print(f"  {name}: {sum(counts):5d} images, per class {counts}", flush=True)
    site_dirs = {}
    for name, idx in zip(site_names, parts):
        site_dirs[name] = write_imagefolder(work / "data" / name, _grey32(pool.images[idx]), pool.labels[idx], classes)
    test_dir = write_imagefolder(work / "data" / "test", _grey32(test.images), test.labels, classes)
    # one recipe for the one-shot model (the federation's [training] table) and the baselines
    recipe = TrainingRecipe(arch=cfg.arch, image_size=cfg.image_size, epochs=cfg.oneshot_epochs,
                            batch_size=cfg.batch_size, lr=cfg.lr, val_fraction=0.1, seed=cfg.seed,
                            augment=cfg.augment)
    rows: list[dict] = []
    synthesis = {"model_dir": str(Path(cfg.model_dir).resolve()), "scheduler": "dpm", "steps": cfg.steps,
                 "guidance": cfg.guidance, "negative_prompt": "", "batch_size": cfg.synthesis_batch,
                 "shard_size": max(cfg.synthesis_batch, 200)}
    training = recipe.run_settings()
    evaluator_site = None
    with LoopbackFederation(work / "federation", synthesis, training, threads=cfg.threads) as fed:
        for method in [m for m in cfg.methods if m in ONESHOT_METHODS]:
            for ipc in cfg.images_per_class:
                fid = f"sim-{method}-{ipc}"
                print(f"[one-shot] {method}, {ipc} synthetic images per class", flush=True)
                res = fed.run(fid, classes, site_dirs, ipc, method=method, domain=cfg.domain)
                evaluator_site = next(iter(site_dirs))
                ev = fed.evaluate(evaluator_site, res["model"], test_dir)
                up = list(res["payload_bytes"].values())
                rows.append({"method": f"one-shot {method}", "setting": f"{ipc} img/class",
                             "images_per_class": ipc, "accuracy": ev["accuracy"],
                             "per_class": [ev["per_class"].get(c) for c in classes],
                             "upload_bytes_per_site": float(np.mean(up)), "upload_bytes_max": max(up),
                             "download_bytes_per_site": res["model"].stat().st_size,
                             "wall_s": res["total_s"], "selected_on": "held-out synthetic images",
                             "synthetic_val_acc": (res.get("training_result") or {}).get("val_acc"),
                             "stages": {"sites prepare+upload": res["prepare_upload_s"],
                                        "synthesis": res["synthesis_s"], "training": res["training_s"],
                                        "fetch": res["fetch_s"]}})
                print(f"    test accuracy {ev['accuracy']:.4f}", flush=True)
        if evaluator_site is None:  # baselines only: a site home is still needed to run `osfl-edge`
            evaluator_site = next(iter(site_dirs))
            fed.enroll(evaluator_site)

        def score(model, path: Path) -> dict:
            from server_daemon.training.export import export_onnx

            export_onnx(model, path, cfg.image_size, classes, arch=cfg.arch)
            return fed.evaluate(evaluator_site, path, test_dir, verify=False)

        site_data = [(to_tensor(_grey32(pool.images[idx])), pool.labels[idx]) for idx in parts]
        torch.manual_seed(cfg.seed)
        if "centralized" in cfg.methods:
            print(f"[centralized] {cfg.central_epochs} epochs on {len(pool)} images", flush=True)
            x = torch.cat([d[0] for d in site_data])
            y = np.concatenate([d[1] for d in site_data])
            res = train_centralized(x, y, len(classes), recipe, cfg.central_epochs, recipe.val_fraction,
                                    labels=classes)
            ev = score(res["model"], out / "models" / "centralized.onnx")
            rows.append({"method": "centralized", "setting": f"{cfg.central_epochs} epochs",
                         "accuracy": ev["accuracy"], "per_class": [ev["per_class"].get(c) for c in classes],
                         "upload_bytes_per_site": None, "download_bytes_per_site": None,
                         "wall_s": round(res["seconds"], 1), "best_epoch": res["best_epoch"],
                         "selected_on": "held-out 10% of the sites' images",
                         "note": "pools the raw images (not federated): the ceiling"})
            print(f"    test accuracy {ev['accuracy']:.4f}", flush=True)
        if "fedavg" in cfg.methods:
            rounds = max(cfg.rounds)
            print(f"[fedavg] {rounds} rounds x {cfg.local_epochs} local epoch(s), {cfg.sites} sites", flush=True)
            t0 = time.monotonic()
            fed_rows = []

            def on_round(r: int, model) -> None:
                ev = score(model, out / "models" / f"fedavg-r{r}.onnx")
                fed_rows.append({"method": "FedAvg", "setting": f"{r} rounds x {cfg.local_epochs} ep",
                                 "rounds": r, "accuracy": ev["accuracy"],
                                 "per_class": [ev["per_class"].get(c) for c in classes],
                                 "wall_s": round(time.monotonic() - t0, 1)})
                print(f"    round {r}: test accuracy {ev['accuracy']:.4f}", flush=True)

            res = run_fedavg(site_data, len(classes), recipe, rounds, cfg.local_epochs, set(cfg.rounds), on_round,
                             labels=classes)
            half = res["bytes_per_round_per_site"] // 2
            for row in fed_rows:
                row["upload_bytes_per_site"] = row["download_bytes_per_site"] = half * row["rounds"]
                row["impl"] = res["impl"]
            rows.extend(fed_rows)
    meta = {"title": cfg.title or f"{cfg.dataset}, {cfg.sites} sites, {cfg.partition}",
            "description": (f"{len(pool)} site images ({cfg.dataset}), {cfg.sites} sites, partition "
                            f"{cfg.partition}; {len(test)} real test images; classifier {cfg.arch} at "
                            f"{cfg.image_size} px; generator {Path(cfg.model_dir).name}."),
            "config": asdict(cfg), "classes": classes, "chance": 1.0 / len(classes),
            "site_counts": dict(zip(site_names, site_counts)), "test_images": len(test),
            "site_images": len(pool), "wall_s": round(time.monotonic() - t_all, 1),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, torch threads "
                       f"{torch.get_num_threads()}",
            "fedavg_impl": next((r.get("impl") for r in rows if r.get("impl")), None)}
    paths = write_results(out, meta, rows)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return {"meta": meta, "rows": rows, "paths": paths}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in str(text).split(",") if v.strip())


def _click_command():
    import click

    @click.command("simulate")
    @click.option("--dataset", default="fashion-mnist", show_default=True,
                  help="fashion-mnist, fashion-mnist-subset, mnist, optdigits, imagefolder:DIR, or A+B (domains)")
    @click.option("--partition", "part", default="dirichlet:0.5", show_default=True,
                  help="iid, dirichlet:BETA or by-domain")
    @click.option("--sites", default=10, show_default=True)
    @click.option("--methods", default="class-prompts,centralized,fedavg", show_default=True)
    @click.option("--model-dir", default=str(DEFAULT_MODEL_DIR), show_default=True,
                  help="the generator: a local diffusers directory (e.g. from `osfl-server pretrain-tiny`)")
    @click.option("--images-per-class", default="100", show_default=True, help="comma list: one federation each")
    @click.option("--rounds", default="1,10,50", show_default=True, help="FedAvg rounds to report")
    @click.option("--local-epochs", default=1, show_default=True)
    @click.option("--central-epochs", default=10, show_default=True)
    @click.option("--oneshot-epochs", default=40, show_default=True,
                  help="epochs of the server's training job on the synthetic images")
    @click.option("--arch", default="tiny", show_default=True, type=click.Choice(["tiny", "resnet18"]))
    @click.option("--max-site-images", default=0, show_default=True, help="cap on all sites' images (0: all)")
    @click.option("--max-test-images", default=0, show_default=True, help="cap on test images (0: all)")
    @click.option("--domain", default="", help="domain text the sites send with class prompts")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--threads", default=0, show_default=True, help="torch threads here and in the daemon's jobs (0: default)")
    @click.option("--steps", default=20, show_default=True, help="synthesis denoising steps (DPM-Solver)")
    @click.option("--out", "out_dir", default="sim-results", show_default=True, type=click.Path(file_okay=False))
    def simulate_cmd(dataset, part, sites, methods, model_dir, images_per_class, rounds, local_epochs,
                     central_epochs, oneshot_epochs, arch, max_site_images, max_test_images, domain, seed, threads, steps,
                     out_dir):
        """Simulate a federation on real images: one-shot methods (real daemon + osfl-edge sites) against
        centralized training and FedAvg on the same partition, classifier and test set."""
        logging.basicConfig(level=logging.WARNING)
        cfg = SimConfig(dataset=dataset, partition=part, sites=sites,
                        methods=tuple(m.strip() for m in methods.split(",") if m.strip()), model_dir=model_dir,
                        images_per_class=_ints(images_per_class), rounds=_ints(rounds), local_epochs=local_epochs,
                        central_epochs=central_epochs, oneshot_epochs=oneshot_epochs, arch=arch,
                        max_site_images=max_site_images, max_test_images=max_test_images, domain=domain, seed=seed,
                        threads=threads, steps=steps)
        res = run_simulation(cfg, out_dir)
        click.echo(res["paths"]["md"].read_text())
        click.echo(f"results: {res['paths']['md']}, {res['paths']['json']}, {res['paths']['accuracy_png']}")

    return simulate_cmd


command = _click_command()
