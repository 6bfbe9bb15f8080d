use proptest::prelude::*;

use super::*;

fn key_from(secret: [u8; 32]) -> String {
    encode_key(
        &KeyPrefix::parse("kw").unwrap(),
        &EnvironmentName::parse("live").unwrap(),
        &secret,
    )
}

#[test]
fn encodes_the_documented_shape() {
    let key = key_from([0xAB; 32]);
    assert_eq!(key.len(), "kw_live_".len() + BODY_CHARS);
    let parsed = ParsedKey::parse(&key).unwrap();
    assert_eq!(parsed.prefix(), "kw");
    assert_eq!(parsed.environment(), "live");
    assert_eq!(parsed.start(), &key[..12]);
    assert_eq!(parsed.expose(), key);
}

#[test]
fn extreme_secrets_round_trip() {
    for secret in [[0u8; 32], [0xFF; 32]] {
        let key = key_from(secret);
        ParsedKey::parse(&key).unwrap();
    }
    // 2^256 - 1 in base62 is 43 digits long, so the zero secret is all zero digits.
    assert!(key_from([0; 32]).starts_with(&format!("kw_live_{}", "0".repeat(43))));
}

#[test]
fn known_vector() {
    // Pinned so that the format never changes by accident: scanners and clients rely on it.
    let mut secret = [0u8; 32];
    secret[31] = 61;
    let key = key_from(secret);
    assert_eq!(&key[8..51], &format!("{}z", "0".repeat(42)));
    let crc = crc32fast::hash(&key.as_bytes()[..51]);
    let mut checksum = String::new();
    push_base62_padded(&mut checksum, u64::from(crc), 6);
    assert_eq!(&key[51..], checksum);
}

#[test]
fn rejects_malformed_inputs() {
    let good = key_from([7; 32]);
    let cases: Vec<(String, MalformedKey)> = vec![
        (String::new(), MalformedKey::Length),
        ("kw_live_".into(), MalformedKey::Length),
        (format!("{good}x"), MalformedKey::Length),
        (good[..good.len() - 1].to_string(), MalformedKey::Length),
        (good.replacen('_', "-", 2), MalformedKey::Shape),
        (good.replacen("kw", "KW", 1), MalformedKey::Segment),
        (
            good.replacen("kw_live", "kwkwkwkwk_live", 1)[..good.len() + 1].to_string(),
            MalformedKey::Length,
        ),
        (
            format!("kw_live_{}", "+".repeat(49)),
            MalformedKey::Alphabet,
        ),
        (
            format!("kw_live_{}000000", "z".repeat(43)),
            MalformedKey::Range,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(ParsedKey::parse(&input), Err(want), "{input:?}");
    }
}

#[test]
fn debug_never_prints_the_secret() {
    let key = key_from([9; 32]);
    let parsed = ParsedKey::parse(&key).unwrap();
    let printed = format!("{parsed:?}");
    assert!(!printed.contains(&key[12..]), "{printed}");
}

#[test]
fn segments_validate() {
    assert!(EnvironmentName::parse("live").is_ok());
    assert!(EnvironmentName::parse("stag1ng").is_ok());
    for bad in ["", "Live", "production", "a_b", "é"] {
        assert!(EnvironmentName::parse(bad).is_err(), "{bad}");
    }
}

proptest! {
    #[test]
    fn round_trip(secret in any::<[u8; 32]>(), prefix in "[a-z0-9]{1,8}", env in "[a-z0-9]{1,8}") {
        let key = encode_key(&KeyPrefix::parse(&prefix).unwrap(), &EnvironmentName::parse(&env).unwrap(), &secret);
        let parsed = ParsedKey::parse(&key).unwrap();
        prop_assert_eq!(parsed.prefix(), prefix.as_str());
        prop_assert_eq!(parsed.environment(), env.as_str());
        prop_assert!(key.len() <= MAX_KEY_LEN);
    }

    #[test]
    fn checksum_rejects_every_single_character_change(secret in any::<[u8; 32]>(), pos in 0usize..57, replacement in "[0-9A-Za-z_]") {
        let key = key_from(secret);
        let pos = pos % key.len();
        let replacement = replacement.as_bytes()[0];
        prop_assume!(key.as_bytes()[pos] != replacement);
        let mut changed = key.into_bytes();
        changed[pos] = replacement;
        let changed = String::from_utf8(changed).unwrap();
        prop_assert!(ParsedKey::parse(&changed).is_err());
    }

    #[test]
    fn parser_never_panics(input in ".{0,80}") {
        let _ = ParsedKey::parse(&input);
    }

    #[test]
    fn parser_never_panics_on_near_keys(body in "[0-9A-Za-z]{49}", prefix in "[a-z0-9_]{0,10}", env in "[a-z0-9_]{0,10}") {
        let _ = ParsedKey::parse(&format!("{prefix}_{env}_{body}"));
    }
}

#[test]
fn checksum_rejects_every_single_character_change_exhaustively() {
    let key = key_from([0x5A; 32]);
    let mut changes = 0;
    for pos in 0..key.len() {
        for &replacement in ALPHABET.iter().chain(b"_-") {
            let mut changed = key.clone().into_bytes();
            if changed[pos] == replacement {
                continue;
            }
            changed[pos] = replacement;
            let changed = String::from_utf8(changed).unwrap();
            assert!(
                ParsedKey::parse(&changed).is_err(),
                "accepted a change at {pos}"
            );
            changes += 1;
        }
    }
    assert!(changes > 3000);
}

/// The range check as first written: the digits multiplied into four 64-bit limbs. Kept as the
/// oracle for the comparison with the digits of 2^256.
fn range_by_multiplication(digits: &[u8]) -> Result<(), MalformedKey> {
    let mut limbs = [0u64; 4];
    for &b in digits {
        let mut carry = u128::from(base62_digit(b).ok_or(MalformedKey::Alphabet)?);
        for limb in &mut limbs {
            let v = u128::from(*limb) * 62 + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
        if carry != 0 {
            return Err(MalformedKey::Range);
        }
    }
    Ok(())
}

fn digits_of(values: &[u8]) -> Vec<u8> {
    values.iter().map(|&v| ALPHABET[v as usize]).collect()
}

#[test]
fn the_range_check_agrees_with_multiplication_at_the_edge() {
    let limit = SECRET_LIMIT.to_vec();
    // 2^256 itself is out of range; one below it is the largest secret.
    let mut below = limit.clone();
    let last = below.iter().rposition(|&d| d > 0).unwrap();
    below[last] -= 1;
    for d in below.iter_mut().skip(last + 1) {
        *d = 61;
    }
    let mut above = limit.clone();
    *above.last_mut().unwrap() += 1;
    for (values, expected) in [
        (limit, Err(MalformedKey::Range)),
        (below, Ok(())),
        (above, Err(MalformedKey::Range)),
        (vec![0; SECRET_CHARS], Ok(())),
        (vec![61; SECRET_CHARS], Err(MalformedKey::Range)),
    ] {
        let digits = digits_of(&values);
        assert_eq!(check_secret_range(&digits), expected);
        assert_eq!(range_by_multiplication(&digits), expected);
    }
    // The largest 32-byte secret encodes to exactly the digits below the limit.
    let max = encode_base62_256(&[0xFF; 32]);
    assert_eq!(check_secret_range(max.as_bytes()), Ok(()));
    // A byte outside the alphabet is reported as such even where the digits are out of range.
    let mut bad = digits_of(&[61; SECRET_CHARS]);
    bad[42] = b'-';
    assert_eq!(check_secret_range(&bad), Err(MalformedKey::Alphabet));
}

proptest! {
    #[test]
    fn the_range_check_agrees_with_multiplication(
        digits in proptest::collection::vec(prop_oneof![
            // Mostly the alphabet, with the top digits weighted towards the limit's.
            8 => proptest::sample::select(ALPHABET.to_vec()),
            1 => any::<u8>(),
        ], SECRET_CHARS),
        top in proptest::option::of(0usize..SECRET_CHARS),
    ) {
        let mut digits = digits;
        // Copy a prefix of the limit's digits so inputs near 2^256 are tried often.
        if let Some(n) = top {
            for (d, &v) in digits.iter_mut().zip(SECRET_LIMIT.iter()).take(n) {
                *d = ALPHABET[v as usize];
            }
        }
        prop_assert_eq!(check_secret_range(&digits), range_by_multiplication(&digits));
    }
}
