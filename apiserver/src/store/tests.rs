//! The store's unit tests: paging, no-op writes and the owner index.

use super::*;

fn pods(store: &Store) -> ResourceType {
    store
        .find_type("", "v1", "pods")
        .unwrap_or_else(|| unreachable!("pods are built in"))
}

fn pod(name: &str, owners: &[&str]) -> Value {
    let refs: Vec<Value> = owners
        .iter()
        .map(|u| json!({"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": u}))
        .collect();
    json!({"metadata": {"name": name, "ownerReferences": refs},
        "spec": {"containers": [{"name": "c", "image": "i"}]}})
}

fn names(objects: &[Value]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or_default())
        .collect()
}

/// A store holding the namespaces `names`.
fn with_namespaces(names: &[&str]) -> Result<Store, ApiError> {
    let store = Store::default();
    let namespaces = store
        .find_type("", "v1", "namespaces")
        .unwrap_or_else(|| unreachable!("namespaces are built in"));
    for name in names {
        store.create(
            &namespaces,
            "",
            json!({"metadata": {"name": name}}),
            Write::default(),
        )?;
    }
    Ok(store)
}

#[test]
fn pages_walk_the_keys_after_the_continue_point() -> Result<(), ApiError> {
    let store = with_namespaces(&["a", "b", "c"])?;
    let t = pods(&store);
    for (ns, name) in [
        ("a", "p1"),
        ("a", "p2"),
        ("b", "p1"),
        ("b", "p3"),
        ("c", "p2"),
    ] {
        store.create(&t, ns, pod(name, &[]), Write::default())?;
    }
    let everything = Selector::default();
    let page = |ns, labels: &Selector, after, limit| {
        let page = store.page(&t, ns, labels, &everything, after, limit);
        let names: Vec<String> = page
            .items
            .iter()
            .map(|o| format!("{}/{}", o["metadata"]["namespace"], o["metadata"]["name"]))
            .map(|n| n.replace('"', ""))
            .collect();
        (names, page.remaining.unwrap_or(usize::MAX))
    };
    assert_eq!(
        page("", &everything, None, Some(2)),
        (vec!["a/p1".into(), "a/p2".into()], 3)
    );
    assert_eq!(
        page("", &everything, Some(("a", "p2")), Some(2)),
        (vec!["b/p1".into(), "b/p3".into()], 1)
    );
    assert_eq!(
        page("", &everything, Some(("b", "p3")), Some(2)),
        (vec!["c/p2".into()], 0)
    );
    // A continue point that is not stored still resumes after where it would sort.
    assert_eq!(
        page("", &everything, Some(("b", "p2")), None),
        (vec!["b/p3".into(), "c/p2".into()], 0)
    );
    // In one namespace, a continue point before it starts at its beginning.
    assert_eq!(
        page("b", &everything, Some(("a", "zz")), Some(1)),
        (vec!["b/p1".into()], 1)
    );
    assert_eq!(
        page("b", &everything, Some(("c", "")), Some(1)),
        (vec![], 0)
    );
    // Selectors count only what matches towards the page; what remains is then not counted
    // (the real server omits remainingItemCount), only whether more follow.
    let p1 = Selector::parse("metadata.name=p1").map_err(ApiError::bad_request)?;
    let page_fields = store.page(&t, "", &everything, &p1, None, Some(1));
    assert_eq!(
        (
            page_fields.items.len(),
            page_fields.more,
            page_fields.remaining
        ),
        (1, true, None)
    );
    let rest = store.page(&t, "", &everything, &p1, Some(("a", "p1")), Some(1));
    assert_eq!((rest.items.len(), rest.more), (1, false));
    assert_eq!(page("", &p1, None, None), (vec![], usize::MAX));
    Ok(())
}

#[test]
fn writes_without_changes_keep_the_version() -> Result<(), ApiError> {
    let store = with_namespaces(&["a"])?;
    let t = pods(&store);
    let created = store.create(&t, "a", pod("p", &[]), Write::default())?;
    let same = store.update(
        &t,
        "a",
        "p",
        Value::clone(&created),
        false,
        Write::default(),
    )?;
    assert_eq!(same, created);
    let mut labelled = Value::clone(&created);
    labelled["metadata"]["labels"] = json!({"x": "y"});
    let relabelled = store.update(&t, "a", "p", labelled, false, Write::default())?;
    assert_ne!(
        relabelled["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    assert_eq!(relabelled["metadata"]["generation"], 1);
    let mut changed = Value::clone(&relabelled);
    changed["spec"]["nodeName"] = json!("n");
    let changed = store.update(&t, "a", "p", changed, false, Write::default())?;
    assert_eq!(changed["metadata"]["generation"], 2);

    // Without a status subresource, anything but metadata is the spec.
    let maps = store
        .find_type("", "v1", "configmaps")
        .unwrap_or_else(|| unreachable!("configmaps are built in"));
    let cm = store.create(
        &maps,
        "a",
        json!({"metadata": {"name": "c"}, "data": {"k": "v"}}),
        Write::default(),
    )?;
    assert_eq!(
        store.update(&maps, "a", "c", Value::clone(&cm), false, Write::default())?,
        cm
    );
    let mut labelled = Value::clone(&cm);
    labelled["metadata"]["labels"] = json!({"x": "y"});
    let labelled = store.update(&maps, "a", "c", labelled, false, Write::default())?;
    assert_eq!(labelled["metadata"]["generation"], 1);
    let mut more = Value::clone(&labelled);
    more["binaryData"] = json!({});
    let more = store.update(&maps, "a", "c", more, false, Write::default())?;
    assert_eq!(more["metadata"]["generation"], 2);
    Ok(())
}

#[test]
fn the_owner_index_follows_every_write() -> Result<(), ApiError> {
    let store = with_namespaces(&["a", "b"])?;
    let t = pods(&store);
    let all = |_: &Value| true;
    store.create(&t, "a", pod("p2", &["u1"]), Write::default())?;
    store.create(&t, "a", pod("p1", &["u1", "u2"]), Write::default())?;
    store.create(&t, "b", pod("p3", &["u1"]), Write::default())?;
    store.create(&t, "a", pod("p4", &[]), Write::default())?;
    // Key order, filtered by namespace.
    assert_eq!(
        names(&store.dependents(&t, "", "u1", all)),
        ["p1", "p2", "p3"]
    );
    assert_eq!(names(&store.dependents(&t, "a", "u1", all)), ["p1", "p2"]);
    assert_eq!(names(&store.dependents(&t, "a", "u2", all)), ["p1"]);
    assert!(store.dependents(&t, "a", "u3", all).is_empty());

    // An update that changes the owners moves the object in the index.
    store.update(&t, "a", "p2", pod("p2", &["u3"]), false, Write::default())?;
    assert_eq!(names(&store.dependents(&t, "a", "u1", all)), ["p1"]);
    assert_eq!(names(&store.dependents(&t, "a", "u3", all)), ["p2"]);

    // Deletes leave it, whether of the object or of its namespace.
    store.delete(&t, "a", "p1", &Value::Null, Write::default())?;
    assert!(store.dependents(&t, "a", "u2", all).is_empty());
    let namespaces = store
        .find_type("", "v1", "namespaces")
        .unwrap_or_else(|| unreachable!("namespaces are built in"));
    store.delete(&namespaces, "", "b", &Value::Null, Write::default())?;
    assert!(store.dependents(&t, "", "u1", all).is_empty());
    assert!(store.lock().objects.dependents.keys().all(|u| u == "u3"));
    Ok(())
}
