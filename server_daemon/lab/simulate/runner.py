"""`osfl-server simulate`: one simulated federation on real images, against its baselines.

Given a labelled dataset, a partition, K sites and one seed, :func:`run_simulation`:

1. loads the sites' pool and the real test set (:func:`load_sim_data`; never overlapping, and for
   Fashion-MNIST disjoint from the half that pretrained the generator), splits the pool over the
   sites (:mod:`.partitions`, seeded) and writes each site's images as an ImageFolder;
2. the one-shot method ``class-prompts`` (captions would need the edge model bundle pulled by every
   site first; not wired here yet): runs the federation for real
   (:class:`.federation.LoopbackFederation`: daemon on loopback, sites as `osfl-edge` processes,
   synthesis and training jobs, signed model fetched by a site) at the largest of
   ``images_per_class``; each smaller count is the first k images per class of that synthetic set
   (nested subsets, so a sweep costs one synthesis), trained by the same ``train_classifier`` with
   the same recipe and scored the same way;
3. ``centralized``: the same classifier trained on the union of the sites' images;
4. ``fedavg`` and ``fedprox`` (Flower's strategies, in-process; see :mod:`.baselines`) for each
   number of ``local_epochs``: the learning rate (and FedProx's mu) chosen on the sites' own
   held-out images (each site keeps back ``val_fraction`` of its images), the chosen setting
   scored after each round count in ``rounds``;
5. scores every model with ``osfl-edge evaluate`` on the same test ImageFolder (baselines are
   exported to ONNX by the server's exporter first), and writes results.md / results.json / plots.

Every method trains with one recipe (:func:`server_daemon.lab.recipe.benchmark_recipe`): McMahan
et al.'s CNN, SGD, label-keeping augmentation, cosine schedule for one-shot and centralized.
Model selection never sees the test set: the one-shot model is the epoch best on held-out synthetic
images (the server's training job), centralized keeps the epoch best on the sites' held-out images,
FedAvg/FedProx settings are chosen on the sites' held-out images and reported after fixed round
counts. The seed drives the partition, the test subsample, the federation id (hence every
synthetic image's seed), classifier initialisation and every epoch's order and augmentation.
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
FEDERATED = ("fedavg", "fedprox")
METHODS = ONESHOT_METHODS + ("centralized",) + FEDERATED
STRATEGY_NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx"}
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "sd-fashion-tiny"


@dataclass(frozen=True)
class SimConfig:
    dataset: str = "fashion-mnist"
    partition: str = "dirichlet:0.5"
    sites: int = 10
    methods: tuple[str, ...] = ("class-prompts", "centralized", "fedavg", "fedprox")
    model_dir: str = str(DEFAULT_MODEL_DIR)
    #: synthetic images per class: the largest is synthesised, the others are nested subsets of it
    images_per_class: tuple[int, ...] = (100,)
    rounds: tuple[int, ...] = (1, 10, 50)
    #: FedAvg/FedProx local epochs per round: each is tuned and reported
    local_epochs: tuple[int, ...] = (1, 5)
    #: learning rates tried for FedAvg/FedProx (chosen on the sites' held-out images)
    lr_grid: tuple[float, ...] = (0.01, 0.03, 0.1)
    #: FedProx proximal weights tried
    mu_grid: tuple[float, ...] = (0.01,)
    #: rounds of each tuning run (0: all of max(rounds)); the chosen setting then runs max(rounds)
    tune_rounds: int = 0
    #: share of each site's images held out (baselines' tuning, centralized's epoch selection)
    val_fraction: float = 0.1
    central_epochs: int = 30
    #: epochs of the server's training job on the synthetic set
    oneshot_epochs: int = 30
    arch: str = "cnn"
    image_size: int = 32
    batch_size: int = 64
    #: one-shot and centralized lr (the federated baselines tune theirs)
    lr: float = 0.01
    augment: bool = True
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
        if not self.images_per_class or min(self.images_per_class) < 1:
            raise ValueError(f"images_per_class must be positive counts, got {self.images_per_class}")
        if any(e < 1 for e in self.local_epochs) or not self.lr_grid:
            raise ValueError("local_epochs must be >= 1 and lr_grid must name at least one learning rate")

    def recipe(self):
        """The benchmark's recipe with this run's classifier, sizes, seed and one-shot epochs."""
        from server_daemon.lab.recipe import benchmark_recipe

        return benchmark_recipe(self.dataset, arch=self.arch, image_size=self.image_size, epochs=self.oneshot_epochs,
                                batch_size=self.batch_size, lr=self.lr, val_fraction=self.val_fraction,
                                seed=self.seed, augment=self.augment)


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


def nested_subset(data, per_class: int):
    """The first ``per_class`` images of each class of a synthetic :class:`Dataset`, in manifest order."""
    from server_daemon.training.data import Dataset

    seen: dict[int, int] = {}
    keep = []
    for sample in data.samples:
        if seen.get(sample.label_index, 0) < per_class:
            seen[sample.label_index] = seen.get(sample.label_index, 0) + 1
            keep.append(sample)
    return Dataset(root=data.root, labels=data.labels, samples=tuple(keep))


def run_simulation(cfg: SimConfig, out_dir: str | Path, *, keep_work: bool = True) -> dict:
    """Run everything in ``cfg``; write results into ``out_dir``; return {"meta", "rows", "paths"}."""
    import torch

    from .baselines import split_sites, to_tensor, train_centralized

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
          f"{len(test)} test images, seed {cfg.seed}", flush=True)
    for name, counts in zip(site_names, site_counts):
        print(f"  {name}: {sum(counts):5d} images, per class {counts}", flush=True)
    site_dirs = {}
    for name, idx in zip(site_names, parts):
        site_dirs[name] = write_imagefolder(work / "data" / name, _grey32(pool.images[idx]), pool.labels[idx], classes)
    test_dir = write_imagefolder(work / "data" / "test", _grey32(test.images), test.labels, classes)
    # one recipe for the one-shot model (the federation's [training] table) and the baselines
    recipe = cfg.recipe()
    rows: list[dict] = []
    synthesis = {"model_dir": str(Path(cfg.model_dir).resolve()), "scheduler": "dpm", "steps": cfg.steps,
                 "guidance": cfg.guidance, "negative_prompt": "", "batch_size": cfg.synthesis_batch,
                 "shard_size": max(cfg.synthesis_batch, 200)}
    training = recipe.run_settings()
    evaluator_site = next(iter(site_dirs))
    with LoopbackFederation(work / "federation", synthesis, training, threads=cfg.threads) as fed:
        for method in [m for m in cfg.methods if m in ONESHOT_METHODS]:
            rows.extend(_run_oneshot(cfg, fed, method, classes, site_dirs, test_dir, recipe, out))
        if not any(m in ONESHOT_METHODS for m in cfg.methods):
            fed.enroll(evaluator_site)  # baselines only: a site home is still needed to run `osfl-edge`

        def score(model, path: Path) -> dict:
            from server_daemon.training.export import export_onnx

            export_onnx(model, path, cfg.image_size, classes, arch=cfg.arch)
            return fed.evaluate(evaluator_site, path, test_dir, verify=False)

        site_data = [(to_tensor(_grey32(pool.images[idx])), pool.labels[idx]) for idx in parts]
        site_train, site_val = split_sites(site_data, cfg.val_fraction, cfg.seed)
        torch.manual_seed(cfg.seed)
        if "centralized" in cfg.methods:
            print(f"[centralized] {cfg.central_epochs} epochs on {len(pool)} images", flush=True)
            # the union of the sites' training parts; the epoch is chosen on their held-out parts
            x = torch.cat([d[0] for d in site_train])
            y = np.concatenate([d[1] for d in site_train])
            val = (torch.cat([d[0] for d in site_val]), np.concatenate([d[1] for d in site_val]))
            res = train_centralized(x, y, len(classes), recipe, cfg.central_epochs, labels=classes, val=val)
            ev = score(res["model"], out / "models" / "centralized.onnx")
            rows.append({"method": "centralized", "setting": f"{cfg.central_epochs} epochs",
                         "accuracy": ev["accuracy"], "per_class": [ev["per_class"].get(c) for c in classes],
                         "upload_bytes_per_site": None, "download_bytes_per_site": None,
                         "wall_s": round(res["seconds"], 1), "best_epoch": res["best_epoch"],
                         "stages": {"training": round(res["seconds"], 1)},
                         "selected_on": "the sites' held-out images",
                         "note": "pools the raw images (not federated): the ceiling"})
            print(f"    test accuracy {ev['accuracy']:.4f}", flush=True)
        for strategy in [m for m in cfg.methods if m in FEDERATED]:
            for epochs in cfg.local_epochs:
                rows.extend(_run_baseline(cfg, strategy, epochs, site_train, site_val, classes, recipe, score, out))
    meta = {"title": cfg.title or f"{cfg.dataset}, {cfg.sites} sites, {cfg.partition}",
            "description": (f"{len(pool)} site images ({cfg.dataset}), {cfg.sites} sites, partition "
                            f"{cfg.partition}, seed {cfg.seed}; {len(test)} real test images; classifier "
                            f"{cfg.arch} at {cfg.image_size} px; generator {Path(cfg.model_dir).name}."),
            "config": asdict(cfg), "recipe": recipe.run_settings(), "classes": classes, "chance": 1.0 / len(classes),
            "site_counts": dict(zip(site_names, site_counts)), "test_images": len(test),
            "site_images": len(pool), "wall_s": round(time.monotonic() - t_all, 1),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, torch threads "
                       f"{torch.get_num_threads()}",
            "fedavg_impl": next((r.get("impl") for r in rows if r.get("impl")), None)}
    paths = write_results(out, meta, rows)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return {"meta": meta, "rows": rows, "paths": paths}


def _run_oneshot(cfg: SimConfig, fed, method: str, classes, site_dirs, test_dir: Path, recipe, out: Path) -> list[dict]:
    """One federation at the largest count (the product's path); smaller counts as nested subsets."""
    from server_daemon.training import train_classifier
    from server_daemon.training.data import load_dataset

    counts = sorted(set(cfg.images_per_class))
    top = counts[-1]
    fid = f"sim-{method}-{top}-s{cfg.seed}"
    print(f"[one-shot] {method}, {top} synthetic images per class", flush=True)
    res = fed.run(fid, classes, site_dirs, top, method=method, domain=cfg.domain)
    evaluator = next(iter(site_dirs))
    up = list(res["payload_bytes"].values())
    common = {"method": f"one-shot {method}", "upload_bytes_per_site": float(np.mean(up)),
              "upload_bytes_max": max(up), "download_bytes_per_site": res["model"].stat().st_size,
              "selected_on": "held-out synthetic images"}
    ev = fed.evaluate(evaluator, res["model"], test_dir)
    rows = [{**common, "setting": f"{top} img/class", "images_per_class": top, "accuracy": ev["accuracy"],
             "per_class": [ev["per_class"].get(c) for c in classes], "wall_s": res["total_s"],
             "synthetic_val_acc": (res.get("training_result") or {}).get("val_acc"),
             "stages": {"sites prepare+upload": res["prepare_upload_s"], "synthesis": res["synthesis_s"],
                        "training": res["training_s"], "fetch": res["fetch_s"]}}]
    print(f"    {top} img/class: test accuracy {ev['accuracy']:.4f}", flush=True)
    if len(counts) > 1:
        full = load_dataset(res["synthetic_dir"], labels=classes)
        per_image_s = (res["synthesis_s"] or 0.0) / max(len(full.samples), 1)
        for k in counts[:-1]:
            t = time.monotonic()
            trained = train_classifier(nested_subset(full, k), out / "work" / f"nested-{k}", recipe, labels=classes,
                                       progress=False, resume=False, device="cpu")
            ev = fed.evaluate(evaluator, trained.onnx_path, test_dir, verify=False)
            train_s = round(time.monotonic() - t, 1)
            rows.append({**common, "setting": f"{k} img/class", "images_per_class": k, "accuracy": ev["accuracy"],
                         "per_class": [ev["per_class"].get(c) for c in classes],
                         "download_bytes_per_site": trained.onnx_path.stat().st_size,
                         "synthetic_val_acc": trained.best_val_acc, "nested_in": top,
                         "wall_s": round(per_image_s * k * len(classes) + train_s, 1),
                         "stages": {"synthesis (share of the largest run)": round(per_image_s * k * len(classes), 1),
                                    "training": train_s}})
            print(f"    {k} img/class (first {k} of the {top}): test accuracy {ev['accuracy']:.4f}", flush=True)
    return sorted(rows, key=lambda r: r["images_per_class"])


def _run_baseline(cfg: SimConfig, strategy: str, epochs: int, site_train, site_val, classes, recipe, score,
                  out: Path) -> list[dict]:
    """One federated baseline at ``epochs`` local epochs: tune on the sites' held-out images, then
    score the chosen setting's global model after each reported round count."""
    from .baselines import tune_federated

    rounds = max(cfg.rounds)
    name = STRATEGY_NAMES[strategy]
    print(f"[{strategy}] {rounds} rounds x {epochs} local epoch(s), {cfg.sites} sites; lr from {list(cfg.lr_grid)}"
          + (f", mu from {list(cfg.mu_grid)}" if strategy == "fedprox" else "")
          + f", chosen on the sites' held-out images after {cfg.tune_rounds or rounds} rounds", flush=True)
    tuned = tune_federated(site_train, site_val, len(classes), recipe, strategy=strategy, local_epochs=epochs,
                           rounds=rounds, report_rounds=cfg.rounds, lrs=cfg.lr_grid, mus=cfg.mu_grid,
                           tune_rounds=cfg.tune_rounds, labels=classes)
    print(f"    chosen: lr {tuned.lr:g}" + (f", mu {tuned.mu:g}" if strategy == "fedprox" else "")
          + f" (held-out accuracy {tuned.val_acc:.4f})", flush=True)
    run = tuned.run
    half = run.bytes_per_round_per_site // 2
    model = run.model
    out_rows = []
    per_round_s = run.seconds / rounds
    for r in sorted(cfg.rounds):
        model.load_state_dict(run.states[r])
        ev = score(model, out / "models" / f"{strategy}-e{epochs}-r{r}.onnx")
        setting = f"{r} rounds x {epochs} ep, lr {tuned.lr:g}" + (f", mu {tuned.mu:g}" if strategy == "fedprox" else "")
        out_rows.append({"method": name, "setting": setting, "rounds": r, "local_epochs": epochs, "lr": tuned.lr,
                         "mu": tuned.mu if strategy == "fedprox" else None, "accuracy": ev["accuracy"],
                         "per_class": [ev["per_class"].get(c) for c in classes],
                         "heldout_acc": run.val_acc.get(r), "tuning": tuned.tried,
                         "upload_bytes_per_site": half * r, "download_bytes_per_site": half * r,
                         "wall_s": round(per_round_s * r, 1),
                         "stages": {"tuning (all settings)": tuned.tune_seconds, "training": round(per_round_s * r, 1)},
                         "selected_on": "the sites' held-out images (lr, mu); fixed round counts",
                         "impl": run.impl})
        print(f"    round {r}: test accuracy {ev['accuracy']:.4f}", flush=True)
    return out_rows


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in str(text).split(",") if v.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in str(text).split(",") if v.strip())


def _click_command():
    import click

    d = SimConfig()

    @click.command("simulate")
    @click.option("--dataset", default="fashion-mnist", show_default=True,
                  help="fashion-mnist, fashion-mnist-subset, mnist, optdigits, imagefolder:DIR, or A+B (domains)")
    @click.option("--partition", "part", default="dirichlet:0.5", show_default=True,
                  help="iid, dirichlet:BETA or by-domain")
    @click.option("--sites", default=10, show_default=True)
    @click.option("--methods", default=",".join(d.methods), show_default=True, help=f"some of {', '.join(METHODS)}")
    @click.option("--model-dir", default=str(DEFAULT_MODEL_DIR), show_default=True,
                  help="the generator: a local diffusers directory (e.g. from `osfl-server pretrain-tiny`)")
    @click.option("--images-per-class", default="100", show_default=True,
                  help="comma list: the largest is synthesised, the others are its first k per class")
    @click.option("--rounds", default="1,10,50", show_default=True, help="FedAvg/FedProx round counts to report")
    @click.option("--local-epochs", default="1,5", show_default=True, help="comma list: each is tuned and reported")
    @click.option("--lr-grid", default=",".join(f"{v:g}" for v in d.lr_grid), show_default=True,
                  help="FedAvg/FedProx learning rates, chosen on the sites' held-out images")
    @click.option("--mu-grid", default=",".join(f"{v:g}" for v in d.mu_grid), show_default=True,
                  help="FedProx proximal weights tried")
    @click.option("--tune-rounds", default=0, show_default=True,
                  help="rounds per tuning run (0: all of the largest round count)")
    @click.option("--central-epochs", default=d.central_epochs, show_default=True)
    @click.option("--oneshot-epochs", default=d.oneshot_epochs, show_default=True,
                  help="epochs of the server's training job on the synthetic images")
    @click.option("--arch", default=d.arch, show_default=True, type=click.Choice(["cnn", "tiny", "resnet18"]))
    @click.option("--max-site-images", default=0, show_default=True, help="cap on all sites' images (0: all)")
    @click.option("--max-test-images", default=0, show_default=True, help="cap on test images (0: all)")
    @click.option("--domain", default="", help="domain text the sites send with class prompts")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--threads", default=0, show_default=True, help="torch threads here and in the daemon's jobs (0: default)")
    @click.option("--steps", default=20, show_default=True, help="synthesis denoising steps (DPM-Solver)")
    @click.option("--out", "out_dir", default="sim-results", show_default=True, type=click.Path(file_okay=False))
    def simulate_cmd(dataset, part, sites, methods, model_dir, images_per_class, rounds, local_epochs, lr_grid, mu_grid,
                     tune_rounds, central_epochs, oneshot_epochs, arch, max_site_images, max_test_images, domain, seed,
                     threads, steps, out_dir):
        """Simulate a federation on real images: one-shot methods (real daemon + osfl-edge sites) against
        centralized training, FedAvg and FedProx on the same partition, classifier and test set."""
        logging.basicConfig(level=logging.WARNING)
        try:
            cfg = SimConfig(dataset=dataset, partition=part, sites=sites,
                            methods=tuple(m.strip() for m in methods.split(",") if m.strip()), model_dir=model_dir,
                            images_per_class=_ints(images_per_class), rounds=_ints(rounds),
                            local_epochs=_ints(local_epochs), lr_grid=_floats(lr_grid), mu_grid=_floats(mu_grid),
                            tune_rounds=tune_rounds, central_epochs=central_epochs, oneshot_epochs=oneshot_epochs,
                            arch=arch, max_site_images=max_site_images, max_test_images=max_test_images, domain=domain,
                            seed=seed, threads=threads, steps=steps)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        res = run_simulation(cfg, out_dir)
        click.echo(res["paths"]["md"].read_text())
        click.echo(f"results: {res['paths']['md']}, {res['paths']['json']}, {res['paths']['accuracy_png']}")

    return simulate_cmd


command = _click_command()
