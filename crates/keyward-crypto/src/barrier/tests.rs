use super::*;

fn ctx<'a>(id: &'a str, field: &'a str) -> Context<'a> {
    Context {
        table: "secret",
        id,
        field,
    }
}

#[test]
fn seal_then_open_round_trips() {
    let ring = Keyring::generate(0).unwrap();
    let sealed = ring.seal(&ctx("a", "data"), b"hunter2").unwrap();
    assert_eq!(term_of(&sealed), Some(1));
    assert_eq!(
        ring.open(&ctx("a", "data"), &sealed).unwrap().as_slice(),
        b"hunter2"
    );
    assert!(
        !sealed.windows(7).any(|w| w == b"hunter2"),
        "plaintext in the ciphertext"
    );
    // Each seal draws a fresh salt: the same plaintext never seals the same way twice.
    assert_ne!(ring.seal(&ctx("a", "data"), b"hunter2").unwrap(), sealed);
}

#[test]
fn a_ciphertext_moved_to_another_record_or_field_fails() {
    let ring = Keyring::generate(0).unwrap();
    let a = ring.seal(&ctx("a", "data"), b"one").unwrap();
    let b = ring.seal(&ctx("b", "data"), b"two").unwrap();
    assert_eq!(
        ring.open(&ctx("b", "data"), &a).err(),
        Some(BarrierError::Integrity)
    );
    assert_eq!(
        ring.open(&ctx("a", "data"), &b).err(),
        Some(BarrierError::Integrity)
    );
    assert_eq!(
        ring.open(&ctx("a", "meta"), &a).err(),
        Some(BarrierError::Integrity)
    );
    let other_table = Context {
        table: "environment",
        id: "a",
        field: "data",
    };
    assert_eq!(
        ring.open(&other_table, &a).err(),
        Some(BarrierError::Integrity)
    );
}

#[test]
fn every_flipped_bit_is_detected() {
    let ring = Keyring::generate(0).unwrap();
    let sealed = ring.seal(&ctx("a", "data"), b"value").unwrap();
    for i in 0..sealed.len() {
        for bit in 0..8 {
            let mut bad = sealed.clone();
            bad[i] ^= 1 << bit;
            assert!(
                ring.open(&ctx("a", "data"), &bad).is_err(),
                "byte {i} bit {bit}"
            );
        }
    }
    for len in 0..sealed.len() {
        assert!(ring.open(&ctx("a", "data"), &sealed[..len]).is_err());
    }
}

#[test]
fn relabelling_the_term_fails() {
    let mut ring = Keyring::generate(0).unwrap();
    let old = ring.seal(&ctx("a", "data"), b"v").unwrap();
    ring.rotate(5).unwrap();
    assert_eq!(ring.newest(), 2);
    let new = ring.seal(&ctx("a", "data"), b"v").unwrap();
    assert_eq!(term_of(&new), Some(2));
    // Old terms still open.
    assert_eq!(ring.open(&ctx("a", "data"), &old).unwrap().as_slice(), b"v");
    let mut relabelled = old.clone();
    relabelled[4] = 2;
    assert_eq!(
        ring.open(&ctx("a", "data"), &relabelled).err(),
        Some(BarrierError::Integrity)
    );
    relabelled[4] = 9;
    assert_eq!(
        ring.open(&ctx("a", "data"), &relabelled).err(),
        Some(BarrierError::UnknownTerm(9))
    );
}

#[test]
fn keyrings_round_trip_under_the_root_key_and_only_in_their_scope() {
    let root = RootKey::generate().unwrap();
    let mut ring = Keyring::generate(7).unwrap();
    ring.rotate(8).unwrap();
    let sealed = root.seal_keyring("env:live", &ring).unwrap();
    let back = root.open_keyring("env:live", &sealed).unwrap();
    assert_eq!(back.terms(), ring.terms());
    let value = ring.seal(&ctx("a", "data"), b"x").unwrap();
    assert_eq!(
        back.open(&ctx("a", "data"), &value).unwrap().as_slice(),
        b"x"
    );
    assert!(root.open_keyring("env:test", &sealed).is_err());
    assert!(
        RootKey::generate()
            .unwrap()
            .open_keyring("env:live", &sealed)
            .is_err()
    );
}

#[test]
fn any_threshold_of_shares_unseal_and_fewer_do_not() {
    let key = UnsealKey::generate().unwrap();
    let root = RootKey::generate().unwrap();
    let sealed_root = key.seal_root(&root).unwrap();
    let tag = new_vault_tag().unwrap();
    let shares = split(&key, 5, 3, &tag).unwrap();
    assert_eq!(shares.len(), 5);
    let texts: Vec<_> = shares.iter().map(|s| s.to_text()).collect();
    let parsed: Vec<Share> = texts
        .iter()
        .map(|t| Share::parse(t, &tag).unwrap())
        .collect();
    for a in 0..5 {
        for b in a + 1..5 {
            for c in b + 1..5 {
                let picked = [parsed[a].clone(), parsed[b].clone(), parsed[c].clone()];
                let combined = combine(&picked).unwrap();
                assert!(combined == key, "shares {a} {b} {c}");
                assert!(combined.open_root(&sealed_root).is_ok());
            }
            let two = combine(&[parsed[a].clone(), parsed[b].clone()]).unwrap();
            assert!(two != key);
            assert_eq!(
                two.open_root(&sealed_root).err(),
                Some(BarrierError::Integrity)
            );
        }
    }
}

#[test]
fn shares_of_another_vault_and_typos_are_refused() {
    let tag = new_vault_tag().unwrap();
    let other_tag = [tag[0] ^ 1, tag[1], tag[2], tag[3]];
    let key = UnsealKey::generate().unwrap();
    let share = split(&key, 3, 2, &other_tag).unwrap().remove(0);
    let text = share.to_text();
    assert_eq!(
        Share::parse(&text, &tag).err(),
        Some(ShareError::OtherVault)
    );
    let mut typo = text.to_string();
    let i = typo.len() - 12;
    let c = if &typo[i..=i] == "a" { "b" } else { "a" };
    typo.replace_range(i..=i, c);
    assert_eq!(
        Share::parse(&typo, &other_tag).err(),
        Some(ShareError::Malformed)
    );
    assert_eq!(
        Share::parse("nonsense", &tag).err(),
        Some(ShareError::Malformed)
    );
    assert!(!format!("{share:?}").contains(&text[15..40]));
}

#[test]
fn one_share_is_the_key_and_bad_parameters_are_refused() {
    let key = UnsealKey::generate().unwrap();
    let tag = new_vault_tag().unwrap();
    let one = split(&key, 1, 1, &tag).unwrap();
    assert!(combine(&one).unwrap() == key);
    for (n, t) in [(0, 0), (3, 4), (3, 1), (17, 3), (2, 0)] {
        assert_eq!(split(&key, n, t, &tag).err(), Some(ShamirError::Parameters));
    }
}

#[test]
fn unseal_key_text_round_trips_and_debug_redacts() {
    let key = UnsealKey::generate().unwrap();
    let text = key.to_text();
    assert!(UnsealKey::from_text(&text).unwrap() == key);
    assert!(UnsealKey::from_text("kwunseal1-00").is_none());
    assert_eq!(format!("{key:?}"), "UnsealKey([redacted])");
    assert!(!format!("{:?}", Keyring::generate(0).unwrap()).contains("key:"));
}

#[test]
fn aes_key_schedules_are_wiped_on_drop() {
    // The `aes` crate implements ZeroizeOnDrop for its ciphers only with its zeroize feature on.
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<aes::Aes256>();
}
