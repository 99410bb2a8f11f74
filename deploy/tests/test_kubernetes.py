"""deploy/kubernetes and deploy/Containerfile, checked offline.

Each kustomization (deploy/kubernetes, the CPU base; deploy/kubernetes/overlays/gpu) is rendered
by kustomize_lite.py (no kubectl needed; when kubectl is installed its `kubectl kustomize`
output must be the same) and every rendered document is validated against the Kubernetes API
schemas of KUBERNETES_VERSIONS, strictly (an unknown field is an error), with the pinned
kubernetes-validate. The rendered Deployment is then checked against configs/palr.toml as the
pod would read it (the mounted ConfigMap, then the PALR_* variables, as src/service/config.rs
layers them): ports, probes, shutdown timing, resources, device, and the image's layout.

    scripts/setup/deploy-venv.sh        # .cache/deploy-venv, pinned (scripts/test.sh does this)
    .cache/deploy-venv/bin/python -m unittest discover -s deploy/tests -v

Without PyYAML or kubernetes-validate every test here reports itself skipped, with the reason.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import subprocess
import sys
import tomllib
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
CONFIG = REPO / "configs" / "palr.toml"
# The Kubernetes releases every manifest is validated against: the oldest one these manifests
# are written for (native gRPC probes are GA since 1.27) and a current one.
KUBERNETES_VERSIONS = ("1.30", "1.35")
# What `kubectl apply -k` is given: the CPU default and the GPU overlay.
VARIANTS = {"cpu": KUBE, "gpu": KUBE / "overlays" / "gpu"}
# The image's working directory (deploy/Containerfile, deploy/stage.sh).
IMAGE_ROOT = "/opt/palr"

try:
    import yaml
    import kubernetes_validate
except ImportError as e:  # pragma: no cover - depends on the environment
    raise unittest.SkipTest(
        f"{e.name} is not installed, so no manifest is validated: run scripts/setup/deploy-venv.sh "
        "and these tests with its interpreter (scripts/test.sh does)"
    ) from None

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kustomize_lite  # noqa: E402


def health_service_name() -> str:
    """The gRPC service name palr's health service reports (src/service/server.rs)."""
    text = (REPO / "src" / "service" / "server.rs").read_text()
    m = re.search(r'pub const SERVICE_NAME: &str = "([^"]+)";', text)
    assert m, "SERVICE_NAME not found in src/service/server.rs"
    return m.group(1)


def toml_value(text: str):
    """An environment value as src/service/config.rs reads it: TOML, else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def host_of(addr: str) -> str:
    return addr.rsplit(":", 1)[0].strip("[]")


class Rendered:
    """One variant, rendered, with the pieces the checks look at."""

    def __init__(self, root: Path):
        self.docs = kustomize_lite.render(root)
        self.by_kind: dict[str, list[dict]] = {}
        for d in self.docs:
            self.by_kind.setdefault(d["kind"], []).append(d)
        (self.deployment,) = self.by_kind["Deployment"]
        self.pod = self.deployment["spec"]["template"]["spec"]
        (self.container,) = [c for c in self.pod["containers"] if c["name"] == "palr"]
        self.ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}

    def one(self, kind: str, name: str) -> dict:
        (d,) = [d for d in self.by_kind.get(kind, []) if d["metadata"]["name"] == name]
        return d

    def config_text(self) -> str:
        """The palr.toml the container is started with: --config, through its volume mount,
        to the ConfigMap key."""
        args = self.container["args"]
        assert args[:2] == ["serve", "--config"] and len(args) == 3, (
            f"args {args}: these checks read the configuration from --config FILE and PALR_* "
            "variables only; a flag such as --addr would override both (extend the test)"
        )
        path = Path(args[2])
        mounts = [m for m in self.container["volumeMounts"] if path.parent == Path(m["mountPath"])]
        assert len(mounts) == 1, f"--config {path} is not in exactly one mounted volume"
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == mounts[0]["name"]]
        cm = self.one("ConfigMap", volume["configMap"]["name"])
        assert path.name in cm["data"], f"ConfigMap {cm['metadata']['name']} has no {path.name}"
        return cm["data"][path.name]

    def config(self) -> dict:
        """The configuration the server runs with: the file, then the PALR_<TABLE>__<KEY>
        variables (src/service/config.rs)."""
        cfg = tomllib.loads(self.config_text())
        for env in self.container.get("env", []):
            name = env["name"]
            rest = name.removeprefix("PALR_")
            if rest == name or "__" not in rest:
                continue
            assert "value" in env, f"{name}: only literal values are understood here"
            *tables, leaf = [part.lower() for part in rest.split("__")]
            at = cfg
            for t in tables:
                at = at.get(t, {})
            # configs/palr.toml writes out every key; palr refuses unknown ones at start.
            assert isinstance(at, dict) and leaf in at, f"{name}: no such key in configs/palr.toml"
            at[leaf] = toml_value(env["value"])
        return cfg


class KubernetesManifests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.variants = {name: Rendered(root) for name, root in VARIANTS.items()}

    def test_config_map_source_is_configs_palr_toml(self):
        copy_ = KUBE / "base" / "palr.toml"
        self.assertEqual(
            copy_.read_bytes(),
            CONFIG.read_bytes(),
            f"{copy_.relative_to(REPO)} differs from configs/palr.toml; kustomize cannot read "
            "files outside its directory, so it holds a copy: cp configs/palr.toml "
            f"{copy_.relative_to(REPO)}",
        )
        for name, r in self.variants.items():
            self.assertEqual(r.config_text(), CONFIG.read_text(), name)

    def test_every_manifest_file_is_rendered(self):
        """No YAML file under deploy/kubernetes escapes validation by being left out of every
        kustomization."""
        listed = set()
        for k in KUBE.rglob("kustomization.yaml"):
            for entry in yaml.safe_load(k.read_text()).get("resources", []):
                p = (k.parent / entry).resolve()
                if p.is_file():
                    listed.add(p)
        files = {p.resolve() for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml"}
        self.assertEqual(files - listed, set(), "manifests that no kustomization lists")

    def test_every_document_validates_against_the_kubernetes_schemas(self):
        failures = []
        checked = 0
        for name, r in self.variants.items():
            for doc in r.docs:
                for version in KUBERNETES_VERSIONS:
                    where = f"{name}: {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version})"
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                        checked += 1
                    except kubernetes_validate.ValidationError as e:
                        at = ".".join(str(p) for p in e.path)
                        failures.append(f"{where}: {at}: {e.message}")
                    except kubernetes_validate.SchemaNotFoundError as e:
                        failures.append(f"{where}: {e.message}")
        self.assertEqual(failures, [], "\n".join(failures))
        kinds = {d["kind"] for r in self.variants.values() for d in r.docs}
        self.assertEqual(
            kinds,
            {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"},
        )
        self.assertGreaterEqual(checked, 12)

    def test_the_validator_rejects_broken_manifests(self):
        """The negative control: the same validation fails on a misspelt field, a wrong type
        and an unknown apiVersion, so the test above cannot pass by validating nothing."""
        good = self.variants["cpu"].deployment
        broken = []
        d = copy.deepcopy(good)
        d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["serviceName"] = "x"
        broken.append(("misspelt field", d))
        d = copy.deepcopy(good)
        d["spec"]["replicas"] = "two"
        broken.append(("wrong type", d))
        d = copy.deepcopy(good)
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
        broken.append(("port name for a number", d))
        for what, doc in broken:
            with self.subTest(what), self.assertRaises(kubernetes_validate.ValidationError):
                kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
        hpa = copy.deepcopy(self.variants["cpu"].one("HorizontalPodAutoscaler", "palr"))
        hpa["apiVersion"] = "autoscaling/v3"
        with self.assertRaises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(hpa, KUBERNETES_VERSIONS[-1], strict=True)

    def test_renderer_agrees_with_kubectl(self):
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            self.skipTest("kubectl is not installed, so kustomize_lite's output is not cross-checked")
        for name, root in VARIANTS.items():
            out = subprocess.run(
                [kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=60
            )
            self.assertEqual(out.returncode, 0, out.stderr)
            theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
            ours = {(d["kind"], d["metadata"]["name"]): d for d in self.variants[name].docs}
            self.assertEqual(ours, theirs, name)

    def test_ports_and_probes_agree_with_the_config(self):
        service = health_service_name()
        for name, r in self.variants.items():
            with self.subTest(name):
                server = r.config()["server"]
                grpc, metrics = port_of(server["addr"]), port_of(server["metrics_addr"])
                for addr in (server["addr"], server["metrics_addr"]):
                    self.assertIn(host_of(addr), ("0.0.0.0", "::"), f"{addr}: unreachable from outside the pod")
                self.assertEqual(r.ports, {"grpc": grpc, "metrics": metrics})
                # The kubelet's gRPC probe speaks plaintext and sends no token (health is exempt
                # from tokens, not from TLS).
                self.assertFalse(server["tls"]["cert_file"], "gRPC probes cannot use TLS")
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    p = r.container[probe]
                    self.assertEqual(p.get("grpc"), {"port": grpc, "service": service}, probe)
                annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
                self.assertEqual(annotations["prometheus.io/port"], str(metrics))
                self.assertEqual(annotations["prometheus.io/path"], "/metrics")

                labels = r.deployment["spec"]["template"]["metadata"]["labels"]
                selector = r.deployment["spec"]["selector"]["matchLabels"]
                self.assertLessEqual(selector.items(), labels.items())
                for svc in r.by_kind["Service"]:
                    self.assertLessEqual(svc["spec"]["selector"].items(), labels.items())
                    for sp in svc["spec"]["ports"]:
                        self.assertIn(sp["targetPort"], r.ports, svc["metadata"]["name"])
                        self.assertEqual(sp["port"], r.ports[sp["targetPort"]])
                headless = r.one("Service", "palr-headless")
                self.assertEqual(headless["spec"]["clusterIP"], "None")
                self.assertEqual(
                    [p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc"], [grpc]
                )
                pdb = r.one("PodDisruptionBudget", "palr")
                self.assertLessEqual(pdb["spec"]["selector"]["matchLabels"].items(), labels.items())
                hpa = r.one("HorizontalPodAutoscaler", "palr")
                target = hpa["spec"]["scaleTargetRef"]
                self.assertEqual(
                    (target["apiVersion"], target["kind"], target["name"]),
                    ("apps/v1", "Deployment", r.deployment["metadata"]["name"]),
                )
                self.assertGreaterEqual(hpa["spec"]["minReplicas"], 2, "one replica and a PDB block drains")

    def test_termination_grace_covers_the_shutdown(self):
        for name, r in self.variants.items():
            with self.subTest(name):
                server = r.config()["server"]
                grace_ms, drain_s = server["shutdown_grace_ms"], server["drain_timeout_s"]
                period = r.pod["terminationGracePeriodSeconds"]
                needed = math.ceil(grace_ms / 1000) + drain_s
                # SIGKILL must not come before the drain timeout can pass and palr can exit;
                # a much longer period only delays rollouts.
                self.assertGreaterEqual(period, needed + 2, f"grace {grace_ms} ms + drain {drain_s} s")
                self.assertLessEqual(period, needed + 30)
                # Readiness must see NOT_SERVING before the listener closes.
                ready = r.container["readinessProbe"]
                self.assertGreaterEqual(
                    grace_ms, 1000 * ready["periodSeconds"] * ready["failureThreshold"]
                )
                self.assertNotIn("preStop", r.container.get("lifecycle", {}), "palr handles SIGTERM itself")

    def test_resources_and_device(self):
        for name, r in self.variants.items():
            with self.subTest(name):
                cfg = r.config()
                res = r.container["resources"]
                for key in ("cpu", "memory"):
                    self.assertIn(key, res["requests"])
                    # Guaranteed QoS; and the CPU limit is what model.threads = 0 sizes the
                    # engine's pool by.
                    self.assertEqual(res["limits"][key], res["requests"][key], key)
                self.assertEqual(cfg["model"]["threads"], 0)
                device, dtype = cfg["model"]["device"], cfg["model"]["dtype"]
                gpus = res["limits"].get("nvidia.com/gpu")
                if name == "gpu":
                    self.assertEqual((device, dtype, gpus), ("cuda:0", "bf16", 1))
                    self.assertTrue(r.container["image"].endswith("-cuda"), r.container["image"])
                else:
                    self.assertEqual((device, gpus), ("cpu", None))
                    self.assertFalse(r.container["image"].endswith("-cuda"))
                # engine::check_device_dtype: a GPU needs bf16 weights.
                if device != "cpu":
                    self.assertEqual(dtype, "bf16")

    def test_image_layout_holds_what_the_config_names(self):
        containerfile = (REPO / "deploy" / "Containerfile").read_text()
        stages = re.split(r"^FROM ", containerfile, flags=re.M)[1:]
        build = [s for s in stages if " AS build" in s.splitlines()[0]]
        self.assertEqual(len(build), 1)
        self.assertIn("scripts/setup/prepare.sh", build[0], "the image must build as the tests do")
        self.assertIn(f"deploy/stage.sh {IMAGE_ROOT}", build[0])
        finals = [s for s in stages if s.splitlines()[0].split()[-1] in ("cpu", "cuda")]
        self.assertEqual(len(finals), 2)
        for s in finals:
            self.assertIn(f"COPY --from=build {IMAGE_ROOT} {IMAGE_ROOT}", s)
            self.assertIn(f"WORKDIR {IMAGE_ROOT}", s)
            self.assertIn("USER 10001:10001", s)

        listing = subprocess.run(
            [str(REPO / "deploy" / "stage.sh"), "--list"], capture_output=True, text=True, check=True
        ).stdout
        staged = {line.split()[1] for line in listing.splitlines()}
        cfg = tomllib.loads(CONFIG.read_text())
        needed = {cfg["model"]["dir"], cfg["data"]["dir"]}
        self.assertEqual(cfg["retrieval"]["plugin_dirs"], [], "plugins are expected beside the binary")
        for spec in cfg["retrieval"]["retrievers"]:
            path = spec["path"]
            needed.add(f"bin/lib{path}.so" if "/" not in path else path)
            weights = spec.get("config", {}).get("weights")
            if weights:
                needed.add(weights)
        self.assertEqual({p for p in needed if Path(p).is_absolute()}, set())
        self.assertEqual(needed - staged, set(), "paths configs/palr.toml names that the image lacks")

        for name, r in self.variants.items():
            self.assertEqual(r.container["workingDir"], IMAGE_ROOT, name)
            self.assertEqual(r.container["command"], [f"{IMAGE_ROOT}/bin/palr"], name)
            self.assertEqual(r.pod["securityContext"]["runAsUser"], 10001, name)
            # The server writes nothing but logs to stderr: a read-only root is enough.
            self.assertTrue(r.container["securityContext"]["readOnlyRootFilesystem"])

    def test_startup_probe_waits_for_loading(self):
        """Until the model is loaded and warmed up the port accepts but does not answer; the
        startup probe must allow that long (README "Deploying" has the measured time)."""
        for name, r in self.variants.items():
            p = r.container["startupProbe"]
            self.assertGreaterEqual(p["periodSeconds"] * p["failureThreshold"], 120, name)
            self.assertNotIn("initialDelaySeconds", r.container["livenessProbe"], name)


if __name__ == "__main__":
    unittest.main()
