//! Test-only: arbitrary JSON for the property tests of decoding and amount parsing.

use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value up to four levels deep, with strings that look like amounts and ids among the
/// arbitrary ones, and objects whose keys are sometimes the contract's fields.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[0-9]{0,40}(\\.[0-9]{0,40})?".prop_map(Value::from),
        "[A-Za-z0-9_.:-]{1,130}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("(deposit_id|user_id|amount|.{0,4})", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
