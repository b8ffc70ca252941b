//! An https probe without `ca_file` trusts the system's CA bundle. The bundle is found
//! through `SSL_CERT_FILE` (as OpenSSL finds it) and read once per process, so this test
//! has a binary of its own: pointing the variable at the test CA cannot leak into the
//! other probe tests, whichever runner runs them.

use anyhow::{Context, Result};
use chaos_tests::agent::make_certs;
use chaos_tests::https_server::TestHttpsServer;

#[test]
fn without_a_ca_file_the_system_bundle_decides() -> Result<()> {
    let tls = make_certs()?;
    // Before any other thread exists (the runtime is built below): setting the
    // environment is then free of races.
    unsafe { std::env::set_var("SSL_CERT_FILE", tls.path().join("ca.pem")) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = TestHttpsServer::start(tls.path()).await?;
        let text = format!(
            "name: chaos-test-roots\nsteady_state:\n  probes:\n    - name: p\n      timeout: 10s\n      \
             http: {{ url: \"https://localhost:{}/health\" }}\nmethod:\n  faults:\n    - name: k\n      \
             target: {{ targets: [\"pid:1\"] }}\n      kill: {{}}\n",
            server.address.port()
        );
        let experiment = chaosctl::engine::experiment::parse(&text).context(text)?;
        let probe = &experiment.steady_state.probes[0];
        assert_eq!(chaosctl::engine::probe::observe(probe).await.1, Ok(()));
        assert_eq!(server.seen().len(), 1);
        Ok(())
    })
}
