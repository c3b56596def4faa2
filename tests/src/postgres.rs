//! PostgreSQL for the end-to-end tests: a schema of one test in the database that
//! `deploy/postgres.sh` makes, named by `CORRAL_TEST_POSTGRES`, dropped afterwards.

use crate::run;

/// A schema of one test.
pub struct Schema {
    url: String,
    pub name: String,
    env: Vec<(String, String)>,
}

impl Schema {
    /// A new schema name; `None` (the test skips) when no PostgreSQL is configured, unless
    /// `CORRAL_E2E_REQUIRED=1`, when that is a failure.
    pub fn new() -> Option<Self> {
        let url = std::env::var("CORRAL_TEST_POSTGRES")
            .ok()
            .filter(|u| !u.is_empty());
        let Some(url) = url else {
            assert!(
                std::env::var("CORRAL_E2E_REQUIRED").as_deref() != Ok("1"),
                "CORRAL_TEST_POSTGRES is not set (bash deploy/postgres.sh prints it)"
            );
            eprintln!("skipping: no PostgreSQL (set CORRAL_TEST_POSTGRES)");
            return None;
        };
        let name = format!("e2e_{}", uuid::Uuid::new_v4().simple());
        let env = vec![
            ("CORRAL_COORD_DATABASE_URL".to_string(), url.clone()),
            ("CORRAL_COORD_DATABASE_SCHEMA".to_string(), name.clone()),
        ];
        Some(Self { url, name, env })
    }

    /// The coordinator's environment for this schema.
    pub fn coordinator_env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let _ = run("psql", &[&self.url, "-qc", &sql]);
    }
}
