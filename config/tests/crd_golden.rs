//! The CRD manifests in deploy/crds/ are generated from the Rust types; this test fails when
//! they differ. Regenerate with `REEF_UPDATE_GOLDEN=1 cargo test -p reef-config --test crd_golden`.

use std::path::PathBuf;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

#[test]
fn committed_crds_match_the_types() {
    let dir = crd_dir();
    let update = std::env::var_os("REEF_UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for (name, yaml) in reef_config::crdgen::manifests() {
        let path = dir.join(&name);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &yaml).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == yaml => {}
            Ok(_) => stale.push(format!("{name} differs")),
            Err(e) => stale.push(format!("{name}: {e}")),
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/crds is out of date ({}); run REEF_UPDATE_GOLDEN=1 cargo test -p reef-config --test crd_golden",
        stale.join(", ")
    );
}

/// Every manifest is a structural v1 CRD of our group, cluster-scoped, with a schema that
/// carries the CIDR validation and the enums.
#[test]
fn manifests_are_cluster_scoped_with_validation() {
    let all = reef_config::crdgen::manifests();
    assert_eq!(all.len(), 9);
    for (name, yaml) in &all {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            v["apiVersion"].as_str(),
            Some("apiextensions.k8s.io/v1"),
            "{name}"
        );
        assert_eq!(v["spec"]["group"].as_str(), Some("reef.dev"), "{name}");
        assert_eq!(v["spec"]["scope"].as_str(), Some("Cluster"), "{name}");
        let ver = &v["spec"]["versions"][0];
        assert_eq!(ver["name"].as_str(), Some("v1alpha1"), "{name}");
        assert!(
            ver["additionalPrinterColumns"]
                .as_sequence()
                .is_some_and(|c| !c.is_empty()),
            "{name}"
        );
    }
    let pool = &all
        .iter()
        .find(|(n, _)| n == "ippools.reef.dev.yaml")
        .unwrap()
        .1;
    let v: serde_yaml::Value = serde_yaml::from_str(pool).unwrap();
    let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["properties"]["cidr"]["format"].as_str(), Some("cidr"));
    assert!(spec["properties"]["cidr"]["pattern"].as_str().is_some());
    let modes: Vec<_> = spec["properties"]["ipipMode"]["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    assert_eq!(modes, ["Always", "CrossSubnet", "Never"]);
    let node = &all
        .iter()
        .find(|(n, _)| n == "reefnodes.reef.dev.yaml")
        .unwrap()
        .1;
    let v: serde_yaml::Value = serde_yaml::from_str(node).unwrap();
    assert!(v["spec"]["versions"][0]["subresources"]["status"].is_mapping());
}

/// Kubernetes accepts only structural schemas: every node says its type (no bare anyOf,
/// no untyped properties), and arrays say their item type.
#[test]
fn schemas_are_structural() {
    fn walk(
        name: &str,
        path: &str,
        v: &serde_yaml::Value,
        bad: &mut Vec<String>,
        seen: &mut usize,
    ) {
        let Some(m) = v.as_mapping() else { return };
        *seen += 1;
        let has = |k: &str| m.contains_key(serde_yaml::Value::from(k));
        if !has("type")
            && !has("x-kubernetes-int-or-string")
            && !has("x-kubernetes-preserve-unknown-fields")
        {
            bad.push(format!("{name}: {path} has no type"));
        }
        for k in ["anyOf", "oneOf", "allOf", "$ref"] {
            if has(k) {
                bad.push(format!("{name}: {path} uses {k}"));
            }
        }
        if v["type"].as_str() == Some("array") && !has("items") {
            bad.push(format!("{name}: {path} is an array without items"));
        }
        if let Some(props) = v["properties"].as_mapping() {
            for (k, p) in props {
                walk(
                    name,
                    &format!("{path}.{}", k.as_str().unwrap_or("?")),
                    p,
                    bad,
                    seen,
                );
            }
        }
        if has("items") {
            walk(name, &format!("{path}[]"), &v["items"], bad, seen);
        }
        if v["additionalProperties"].is_mapping() {
            walk(
                name,
                &format!("{path}{{}}"),
                &v["additionalProperties"],
                bad,
                seen,
            );
        }
    }
    let (mut bad, mut seen) = (Vec::new(), 0);
    for (name, yaml) in reef_config::crdgen::manifests() {
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        walk(
            &name,
            "",
            &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            &mut bad,
            &mut seen,
        );
    }
    assert!(bad.is_empty(), "{bad:#?}");
    // The walk reached the nested fields (allocations[].attributes.podName and the like).
    assert!(seen >= 90, "visited only {seen} schema nodes");
}
