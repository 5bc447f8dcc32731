//! The helper's own promises, where a broken one would let other tests pass or fail for nothing.

use testkit::TestEnv;

/// A process that could not start (here a bad setting; in CI once its HTTP port taken) must not
/// be waited for as if it were starting, nor taken for another process answering on its port.
#[tokio::test(flavor = "multi_thread")]
#[should_panic(expected = "exited before it was ready")]
async fn ready_fails_at_once_for_a_process_that_exited() {
    let env = TestEnv::new().await;
    let p = env.spawn("deposit", &[("BATCH_MAX", "0")]);
    env.ready(&p).await;
}
