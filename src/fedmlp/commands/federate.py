"""``fedmlp federate``: one method and seed as a real Flower federation on this machine.

One SuperLink and one SuperNode per client of the partition, on 127.0.0.1, each SuperNode told its
store and partition entry through its node config; the ServerApp scores on the test store (the
partition's test and validation images) and writes the same artifacts as ``fedmlp train``
(``model.pt``, ``rounds.csv``) plus
``federation.json`` (sites, drops, times). Every process it starts is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fedmlp.commands.common import declare_paths
from fedmlp.errors import FedmlpError

log = logging.getLogger(__name__)


class SiteFailed(FedmlpError):
    """The run stopped because a site failed (the failure policy); exit status 1."""


def cmd_federate(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_text
    from fedmlp.commands.common import read_json
    from fedmlp.commands.training import resume_point, training_inputs
    from fedmlp.failures import check_min_sites
    from fedmlp.flower.app import write_app
    from fedmlp.flower.local import LocalRun, run_federation

    inputs = training_inputs(args)  # every setting checked before a process starts
    partition = read_json(args.partition)
    if partition.get("classes") != inputs.store.classes:
        raise FedmlpError(f"{args.partition}: partition classes {partition.get('classes')} do not match the store's {inputs.store.classes}")
    n_sites = len(partition["clients"])
    check_min_sites(args.min_sites, n_sites, "--min-sites")
    check_min_sites(inputs.train.min_sites, n_sites, "config key 'train.min_sites'")
    test_store = (args.test_store or args.store).resolve()
    out_federation = args.out_federation or args.out_model.parent / "federation.json"
    for path in (args.out_model, args.out_rounds, out_federation):
        path.parent.mkdir(parents=True, exist_ok=True)

    temporary = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="fedmlp-federate-")) if temporary else args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    # The ServerApp writes its outcome into the work directory; --out-federation is replaced only
    # once the run has succeeded (a failed run's outcome stays in the work directory, beside the logs).
    outcome_file = work / "federation.json"
    outcome_file.unlink(missing_ok=True)  # an earlier run's, in a reused work directory
    resume = resume_point(args)
    if resume is not None:  # the sites' state must outlive this command, next to the server's
        job_id, state_dir = f"job-{resume.key[:16]}", resume.path.resolve().parent / f"{resume.path.name}.sites"
    else:
        job_id, state_dir = "job", work / "sites"
    for part in ("test", "val"):  # scratch inputs of the ServerApp
        (work / f"{part}-images.json").write_text(json.dumps(partition.get(part, [])))
    run_config = {
        "method": args.method, "seed": args.seed, "train": args.train, "model": args.model, "method-settings": args.method_settings,
        "job-id": job_id, "num-sites": n_sites, "min-sites": args.min_sites, "test-store": str(test_store),
        "test-images": str(work / "test-images.json"), "val-images": str(work / "val-images.json"), "out-model": str(args.out_model.resolve()),
        "out-rounds": str(args.out_rounds.resolve()), "out-federation": str(outcome_file),
        "resume-state": str(resume.path.resolve()) if resume else "", "resume-key": resume.key if resume else "",
        "resume-every": args.resume_every, "connect-timeout": 300.0, "round-timeout": float(args.round_timeout),
    }
    node_configs = [{"store": str(args.store.resolve()), "client-id": int(c["id"]), "partition": str(args.partition.resolve()),
                     "state-dir": str(state_dir)} for c in partition["clients"]]
    begin = time.perf_counter()
    run = run_federation(LocalRun(work, node_configs, run_config, write_app(work / "app"), timeout=args.timeout, secure=args.secure))
    seconds = time.perf_counter() - begin
    outcome = json.loads(outcome_file.read_text()) if outcome_file.exists() else None
    if outcome is None or outcome.get("status") != "completed":
        error = (outcome or {}).get("error") or f"the run ended as {run.status or 'unknown'} without a result"
        raise (SiteFailed if (outcome or {}).get("site_failure") else FedmlpError)(f"{error} (logs in {work / 'logs'})")
    write_text(out_federation, outcome_file.read_text())
    if outcome.get("dropped"):
        log.warning("sites dropped during the run (min-sites %d): %s", args.min_sites or inputs.train.min_sites,
                    "; ".join(f"client {d['client_id']} in round {d['round']} ({d['exchange']}): {d['reason']}" for d in outcome["dropped"]))
    log.info("federate: %d sites, %d rounds in %.1f s (start %.1f s, run %.1f s, stop %.1f s); wrote %s, %s, %s",
             len(outcome["sites"]), outcome["rounds_done"], seconds, run.seconds.get("start", 0), run.seconds.get("run", 0),
             run.seconds.get("stop", 0), args.out_model, args.out_rounds, out_federation)
    if resume is not None:  # the run is complete: the sites' saved state is no longer needed
        shutil.rmtree(state_dir, ignore_errors=True)
    if temporary:
        shutil.rmtree(work, ignore_errors=True)


def _federate(args: argparse.Namespace) -> None:
    try:
        cmd_federate(args)
    except SiteFailed as exc:  # not a usage error: the one line, and status 1
        from fedmlp.errors import one_line

        print(f"fedmlp federate: error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_flower_app(args: argparse.Namespace) -> None:
    """The Flower app directory (a pyproject.toml naming our ServerApp and ClientApp and declaring
    every run-config key) that a coordinator submits with ``flwr run``."""
    from fedmlp.flower.app import write_app

    print(write_app(args.out) / "pyproject.toml")


def add_commands(add) -> None:
    p = add("federate", _federate, "one method and seed as a Flower federation on this machine (one SuperNode per client)")
    p.add_argument("--store", type=Path, required=True, help="the sites' image store (each site reads only its own images)")
    p.add_argument("--partition", type=Path, required=True, help="partition JSON: one site per client; its test and validation lists are scored")
    p.add_argument("--method", required=True, help="a registered method (fedmlp methods lists them)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--train", default="{}", metavar="JSON", help="""the 'train' config section, e.g. '{"rounds": 20, "batch_size": 32}'""")
    p.add_argument("--model", default="{}", metavar="JSON", help="""the 'model' config section, e.g. '{"arch": "compact-cnn", "width": 12}'""")
    p.add_argument("--method-settings", default="{}", metavar="JSON",
                      help="""the method's own config section, e.g. '{"warmup_rounds": 8, "lambda_cr": 1.0}' for fedmlp""")
    p.add_argument("--test-store", type=Path, default=None, help="the store the server scores on, holding the test and validation images (default: --store)")
    p.add_argument("--min-sites", type=int, default=0,
                   help="continue without a failed site while at least this many remain (default 0: a failed site stops the run)")
    p.add_argument("--round-timeout", type=float, default=3600.0, help="seconds a site may take to answer one message")
    p.add_argument("--timeout", type=float, default=0.0, help="seconds for the whole run (default 0: no limit)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="Flower's home, logs and the app (default: a temporary directory, removed after a successful run)")
    p.add_argument("--resume-state", type=Path, default=None,
                   help="the coordinator's state between rounds (the sites' state goes to <file>.sites/): "
                        "saved as training goes, continued if present, removed at the end")
    p.add_argument("--resume-every", type=int, default=1, help="save the state every N rounds")
    p.add_argument("--out-model", type=Path, required=True)
    p.add_argument("--out-rounds", type=Path, required=True)
    p.add_argument("--out-federation", type=Path, default=None,
                   help="sites, drops and times (default: federation.json beside --out-model); replaced only when the run completes "
                        "(a failed run's outcome stays in the work directory)")
    p.add_argument("--secure", action="store_true",
                   help="TLS (a throwaway CA and certificate for 127.0.0.1) and SuperNode authentication (keys registered with the SuperLink)")
    declare_paths(p, ["--store", "--partition", "--test-store"],
                  ["--out-model", "--out-rounds", "--out-federation", "--resume-state", "--work-dir"])

    p = add("flower-app", cmd_flower_app, "write the Flower app directory a coordinator submits with 'flwr run' (README: Running across sites)")
    p.add_argument("out", type=Path, help="directory to write pyproject.toml into")
    declare_paths(p, outputs=["out"])
