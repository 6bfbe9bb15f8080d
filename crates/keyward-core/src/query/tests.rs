use proptest::prelude::*;

use super::*;

fn holds<'a>(held: &'a [&'a str]) -> impl Fn(&str) -> bool + 'a {
    move |wanted| {
        let held: Vec<Permission> = held.iter().map(|p| Permission::parse(p).unwrap()).collect();
        crate::permission::grants(&held, wanted)
    }
}

#[test]
fn precedence_and_evaluation() {
    let q = PermissionQuery::parse("invoices:read AND (orders:read OR admin:*)").unwrap();
    assert_eq!(q.to_string(), "invoices:read AND (orders:read OR admin:*)");
    assert_eq!(
        q.evaluate(&holds(&["invoices:read", "orders:read"])),
        Ok(())
    );
    assert_eq!(q.evaluate(&holds(&["invoices:read", "admin:*"])), Ok(()));
    assert_eq!(q.evaluate(&holds(&["invoices:*", "*"])), Ok(()));
    assert_eq!(
        q.evaluate(&holds(&["orders:read"])),
        Err(Unmet::Missing(Permission::parse("invoices:read").unwrap()))
    );
    assert_eq!(
        q.evaluate(&holds(&["invoices:read", "admin:read"])),
        Err(Unmet::Missing(Permission::parse("orders:read").unwrap()))
    );
    // AND binds tighter than OR.
    let q = PermissionQuery::parse("a:x OR b:x AND c:x").unwrap();
    assert_eq!(q.to_string(), "a:x OR b:x AND c:x");
    assert_eq!(q.evaluate(&holds(&["a:x"])), Ok(()));
    assert!(q.evaluate(&holds(&["b:x"])).is_err());
}

#[test]
fn not_excludes() {
    let q = PermissionQuery::parse("invoices:read and not invoices:delete").unwrap();
    assert_eq!(q.to_string(), "invoices:read AND NOT invoices:delete");
    assert_eq!(q.evaluate(&holds(&["invoices:read"])), Ok(()));
    assert_eq!(
        q.evaluate(&holds(&["invoices:*"])),
        Err(Unmet::Excluded(
            Permission::parse("invoices:delete").unwrap()
        ))
    );
}

#[test]
fn errors_name_the_position() {
    for (text, position) in [
        ("", 0),
        ("a:b AND", 7),
        ("(a:b", 4),
        ("a:b)", 3),
        ("a:b c:d", 4),
        ("AND a:b", 0),
        ("a:b OR Invoices:read", 7),
        ("a:b & c:d", 4),
        ("invoices", 0),
        ("é", 0),
    ] {
        let err = PermissionQuery::parse(text).unwrap_err();
        assert_eq!(err.position, position, "{text:?}: {err}");
    }
}

#[test]
fn limits_hold() {
    let deep = format!("{}a:b{}", "(".repeat(40), ")".repeat(40));
    assert!(PermissionQuery::parse(&deep).is_err());
    let wide = vec!["a:b"; 65].join(" OR ");
    assert!(PermissionQuery::parse(&wide).is_err());
    assert!(PermissionQuery::parse(&"x".repeat(1001)).is_err());
    let nots = format!("{}a:b", "NOT ".repeat(40));
    assert!(PermissionQuery::parse(&nots).is_err());
}

fn arb_query() -> impl Strategy<Value = PermissionQuery> {
    let leaf = "(\\*|[a-c]{1,2}):(\\*|[x-z])"
        .prop_map(|p| PermissionQuery::Has(Permission::parse(&p).unwrap()));
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner
                .clone()
                .prop_map(|q| PermissionQuery::Not(Box::new(q))),
            proptest::collection::vec(inner.clone(), 2..4).prop_map(PermissionQuery::all),
            proptest::collection::vec(inner, 2..4).prop_map(PermissionQuery::any),
        ]
    })
}

proptest! {
    #[test]
    fn round_trips_through_its_printed_form(q in arb_query()) {
        let printed = q.to_string();
        prop_assert_eq!(PermissionQuery::parse(&printed).unwrap(), q, "{}", printed);
    }

    #[test]
    fn parser_never_panics(text in ".{0,200}") {
        let _ = PermissionQuery::parse(&text);
    }

    #[test]
    fn parser_never_panics_on_near_queries(text in "[ ()a-c:*xANDORNOT]{0,80}") {
        let _ = PermissionQuery::parse(&text);
    }

    #[test]
    fn evaluation_matches_boolean_semantics(q in arb_query(), held in proptest::collection::vec("(\\*|[a-c]{1,2}):(\\*|[x-z])", 0..5)) {
        let held: Vec<Permission> = held.iter().map(|p| Permission::parse(p).unwrap()).collect();
        let has = |w: &str| crate::permission::grants(&held, w);
        fn truth(q: &PermissionQuery, has: &dyn Fn(&str) -> bool) -> bool {
            match q {
                PermissionQuery::Has(p) => has(p.as_str()),
                PermissionQuery::Not(i) => !truth(i, has),
                PermissionQuery::And(items) => items.iter().all(|i| truth(i, has)),
                PermissionQuery::Or(items) => items.iter().any(|i| truth(i, has)),
            }
        }
        prop_assert_eq!(q.evaluate(&has).is_ok(), truth(&q, &has));
    }
}
