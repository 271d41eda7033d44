//! plusmoin's tables are its own: `plusmoin_heartbeat` and `plusmoin_hold`
//! live in schema [`SCHEMA`], every statement names that schema (and
//! `pg_catalog` for its functions), and a table found there is used only if
//! it belongs to a role plusmoin can trust.
//!
//! Where another role may create tables in `public` (the default before
//! PostgreSQL 15, or a `GRANT CREATE ON SCHEMA public`), that role could
//! create `plusmoin_hold` or `plusmoin_heartbeat` first, with triggers, rules
//! or row-level policies of its own: their code would run as plusmoin's
//! role at every write, and its rows would count as holds or heartbeats. So
//! before plusmoin prepares a statement on one of its tables it asks who
//! owns it ([`check`]). Trusted owners are the role plusmoin logs in as,
//! a role it is a member of (granted, directly or through other roles; a
//! superuser plusmoin is not "member" of every role here), and superusers
//! (who can do anything in the database anyway). Anyone else's table is
//! refused, with its owner named and the fix.
//!
//! The check is made when statements are prepared, not at every use: a
//! table that is ours cannot be swapped for another role's without being
//! dropped first, which only its owner or a superuser can do.

/// The schema of plusmoin's tables.
pub(crate) const SCHEMA: &str = "public";

/// Who owns one of plusmoin's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// No such table in [`SCHEMA`].
    Missing,
    /// A trusted role: plusmoin may use it.
    Ours,
    /// Another role's: never prepared on, never read.
    Foreign {
        /// The owner's name (escaped: it is shown).
        owner: String,
        /// The role plusmoin logs in as (escaped).
        me: String,
    },
}

/// The ownership question for `table` (a constant name in [`SCHEMA`]): one
/// row (the owner, plusmoin's role, whether the owner is trusted) when the
/// table exists, none otherwise. Only catalog relations and functions,
/// each named with its schema.
pub(crate) fn query(table: &str) -> String {
    format!(
        "WITH RECURSIVE mine(oid) AS ( \
           SELECT r.oid FROM pg_catalog.pg_roles AS r \
           WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER \
           UNION \
           SELECT m.roleid FROM pg_catalog.pg_auth_members AS m \
           JOIN mine ON m.member OPERATOR(pg_catalog.=) mine.oid) \
         SELECT pg_catalog.pg_get_userbyid(c.relowner)::pg_catalog.text AS owner, \
           CURRENT_USER::pg_catalog.text AS me, \
           (o.rolsuper OR c.relowner IN (SELECT oid FROM mine)) AS trusted \
         FROM pg_catalog.pg_class AS c \
         JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         JOIN pg_catalog.pg_roles AS o ON o.oid OPERATOR(pg_catalog.=) c.relowner \
         WHERE n.nspname OPERATOR(pg_catalog.=) '{SCHEMA}' \
           AND c.relname OPERATOR(pg_catalog.=) '{table}'"
    )
}

/// Asks who owns `table` (see [`query`]).
pub(crate) async fn check(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<Owner, tokio_postgres::Error> {
    let rows = client.query(&query(table), &[]).await?;
    let Some(row) = rows.first() else {
        return Ok(Owner::Missing);
    };
    let owner: String = row.try_get(0)?;
    let me: String = row.try_get(1)?;
    let trusted: bool = row.try_get(2)?;
    Ok(if trusted {
        Owner::Ours
    } else {
        Owner::Foreign {
            owner: crate::text::escape_controls(&owner),
            me: crate::text::escape_controls(&me),
        }
    })
}

/// Why a table of another role's is not used, and how to fix it.
pub(crate) fn refusal(table: &str, owner: &str, me: &str) -> String {
    format!(
        "table {SCHEMA}.{table} belongs to role {owner:?}, not to {me:?} (the role plusmoin \
         logs in as), a role it is a member of, or a superuser: plusmoin does not use it (its \
         triggers would run as {me:?}). Check what it holds, then drop it (DROP TABLE \
         {SCHEMA}.{table}) or, if it is plusmoin's, give it back (ALTER TABLE {SCHEMA}.{table} \
         OWNER TO {})",
        quote_ident(me)
    )
}

/// `name` as an SQL identifier, for a statement an operator copies.
fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_owner_and_the_fix() {
        let r = refusal("plusmoin_hold", "rogue", "plusmoin");
        assert!(r.starts_with("table public.plusmoin_hold belongs to role \"rogue\""));
        assert!(r.contains("DROP TABLE public.plusmoin_hold"), "{r}");
        assert!(
            r.contains("ALTER TABLE public.plusmoin_hold OWNER TO plusmoin"),
            "{r}"
        );
        let r = refusal("plusmoin_hold", "rogue", "Pm \"x\"");
        assert!(r.ends_with("OWNER TO \"Pm \"\"x\"\"\")"), "{r}");
    }

    #[test]
    fn the_query_names_every_schema() {
        let q = query("plusmoin_hold");
        assert!(q.contains("c.relname OPERATOR(pg_catalog.=) 'plusmoin_hold'"));
        assert!(q.contains("n.nspname OPERATOR(pg_catalog.=) 'public'"));
        for from in q.split(" FROM ").skip(1).chain(q.split(" JOIN ").skip(1)) {
            assert!(
                from.starts_with("pg_catalog.") || from.starts_with("mine"),
                "{from}"
            );
        }
    }
}
