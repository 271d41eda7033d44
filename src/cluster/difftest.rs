//! TEMPORARY differential test: indexed step == original step.
use super::*;
use proptest::prelude::*;

fn name(i: u16) -> NodeName {
    NodeName::new("127.0.0.1", 5000 + i)
}

fn obs() -> impl Strategy<Value = Observation> {
    prop_oneof![
        (0i64..5).prop_map(|t| Observation::Master {
            wrote_at: Time(t * 1_000_000)
        }),
        (0u16..9, prop::option::of(0u32..5), 0i64..30, any::<bool>()).prop_map(
            |(m, c, t, some)| {
                Observation::Slave {
                    heartbeat: some.then(|| Heartbeat {
                        master_name: name(m).to_string(),
                        cluster_id: c,
                        written_at: Time(t * 500_000),
                    }),
                }
            }
        ),
        Just(Observation::Down { reason: "x".into() }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn same_as_original(
        beats in prop::collection::vec((prop::collection::vec(obs(), 8), prop::collection::vec(any::<bool>(), 8)), 1..30),
        max in 1u64..20, rec in 0u64..20,
    ) {
        let policy = Policy { max_sync_delay: std::time::Duration::from_millis(max * 500), recover_sync_delay: std::time::Duration::from_millis(rec * 500) };
        let mut state = State::default();
        for (k, (o, present)) in beats.iter().enumerate() {
            let list: Vec<(NodeName, Observation)> = o.iter().enumerate()
                .filter(|(i, _)| present[*i] || k % 3 != 2)
                .map(|(i, o)| (name(i as u16), o.clone())).collect();
            let now = Time(k as i64 * 1_000_000 + 7);
            let a = step(&state, &list, now, &policy);
            let b = super::reference::step(&state, &list, now, &policy);
            prop_assert_eq!(&a, &b);
            state = a.0;
        }
    }
}
