"""The namespaced-controller checks accept the shipped overlay's RBAC and catch it widening."""

import copy
import unittest
from pathlib import Path

import yaml

from daemonset_checks import namespaced_rbac_problems

MANIFESTS = Path(__file__).resolve().parent.parent.parent / "manifests"
POD_ACCESS = MANIFESTS / "overlays" / "namespaced-controller" / "pod-access.yaml"
NODES_ONLY = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "chaosctl"},
    "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}],
}


def shipped():
    return [NODES_ONLY] + list(yaml.safe_load_all(POD_ACCESS.read_text()))


class NamespacedRbacTest(unittest.TestCase):
    def test_the_shipped_roles_pass(self):
        self.assertEqual(namespaced_rbac_problems(shipped()), [])

    def test_pods_in_the_cluster_role_are_caught(self):
        docs = shipped()
        docs[0] = copy.deepcopy(NODES_ONLY)
        docs[0]["rules"].append({"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]})
        self.assertIn("not only list on nodes", " ".join(namespaced_rbac_problems(docs)))

    def test_a_wider_role_and_a_missing_binding_are_caught(self):
        docs = shipped()
        role = next(d for d in docs if d["kind"] == "Role")
        role["rules"][0]["verbs"].append("create")
        self.assertIn("grants", " ".join(namespaced_rbac_problems(docs)))
        docs = [d for d in shipped() if not (d["kind"] == "RoleBinding" and d["metadata"]["namespace"] == "db")]
        self.assertIn("no RoleBinding db/chaosctl-pods", namespaced_rbac_problems(docs))

    def test_a_binding_to_another_subject_is_caught(self):
        docs = shipped()
        binding = next(d for d in docs if d["kind"] == "RoleBinding")
        binding["subjects"][0]["namespace"] = "default"
        self.assertTrue(any("binds" in p for p in namespaced_rbac_problems(docs)))


if __name__ == "__main__":
    unittest.main()
