//! Per-table catalog queries: the tenant column, row counts, policies, indexes, the
//! foreign keys that point at the table, checks, primary key, triggers, sequences.

use std::collections::BTreeSet;

use tokio_postgres::GenericClient;

use super::{
    has_privileges, ColumnState, ForeignKey, IndexState, PolicyState, SequenceState, TableState,
};
use crate::control::policy::db::DbError;
use crate::control::policy::sql::{quote_ident, QualifiedName};

pub(super) async fn table_state<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
    column: &str,
    app: Option<&str>,
) -> Result<TableState, DbError> {
    let row = client
        .query_one(
            "SELECT pg_get_userbyid(c.relowner)::text, c.relrowsecurity, c.relforcerowsecurity, \
                    CASE WHEN $2::text IS NULL THEN false \
                         ELSE pg_has_role($2::text::name, c.relowner, 'MEMBER') END, \
                    n.nspname::text, c.relname::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[&oid, &app],
        )
        .await?;
    let name = QualifiedName::new(row.get::<_, String>(4), row.get::<_, String>(5));
    let column_state = column_state(client, oid, column).await?;
    let (rows, null_tenants) = count_rows(client, &name, column, column_state.is_some()).await?;
    Ok(TableState {
        oid,
        owner: row.get(0),
        rls_enabled: row.get(1),
        rls_forced: row.get(2),
        app_owns: row.get(3),
        rows,
        null_tenants,
        column: column_state,
        policies: policies(client, oid).await?,
        indexes: indexes(client, oid).await?,
        referenced_by: referencing_keys(client, oid).await?,
        check_constraints: check_constraints(client, oid).await?,
        primary_key: primary_key(client, oid).await?,
        update_triggers: update_triggers(client, oid).await?,
        sequences: sequences(client, oid, app).await?,
        app_privileges: match app {
            Some(app) => has_privileges(client, oid, app).await?,
            None => BTreeSet::new(),
        },
    })
}

async fn column_state<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
    column: &str,
) -> Result<Option<ColumnState>, DbError> {
    Ok(client
        .query_opt(
            "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_attribute a \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&oid, &column],
        )
        .await?
        .map(|r| ColumnState {
            type_name: r.get(0),
            not_null: r.get(1),
            default: r.get(2),
        }))
}

async fn count_rows<C: GenericClient + Sync>(
    client: &C,
    table: &QualifiedName,
    column: &str,
    has_column: bool,
) -> Result<(i64, i64), DbError> {
    let nulls = if has_column {
        format!("count(*) FILTER (WHERE {} IS NULL)", quote_ident(column))
    } else {
        "count(*)".into()
    };
    let row = client
        .query_one(&format!("SELECT count(*), {nulls} FROM {table}"), &[])
        .await?;
    Ok((row.get(0), row.get(1)))
}

pub async fn policies<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<PolicyState>, DbError> {
    let rows = client
        .query(
            "SELECT polname::text, polcmd::text, polpermissive, \
                    ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END \
                          FROM unnest(polroles) AS r), \
                    pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) \
             FROM pg_policy WHERE polrelid = $1 ORDER BY polname",
            &[&oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PolicyState {
            name: r.get(0),
            cmd: first_char(r.get(1)),
            permissive: r.get(2),
            roles: r.get(3),
            using: r.get(4),
            check: r.get(5),
        })
        .collect())
}

fn first_char(text: String) -> char {
    text.chars().next().unwrap_or(' ')
}

/// Key columns of an index, in order (NULL for expressions), as a SQL expression over
/// `i` (pg_index).
const INDEX_COLUMNS: &str = "ARRAY(SELECT a.attname::text \
     FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
     LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
     WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)";

/// Every index of a table.
pub async fn indexes<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<IndexState>, DbError> {
    let sql = format!(
        "SELECT i.indexrelid, ci.relname::text, {INDEX_COLUMNS}, i.indisunique, \
                i.indisprimary, i.indisvalid, pg_get_expr(i.indpred, i.indrelid), \
                con.conname::text, con.contype::text \
         FROM pg_index i JOIN pg_class ci ON ci.oid = i.indexrelid \
         LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid \
              AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x') \
         WHERE i.indrelid = $1 ORDER BY ci.relname"
    );
    let rows = client.query(&sql, &[&oid]).await?;
    Ok(rows
        .iter()
        .map(|r| IndexState {
            oid: r.get(0),
            name: r.get(1),
            columns: r.get(2),
            unique: r.get(3),
            primary: r.get(4),
            valid: r.get(5),
            predicate: r.get(6),
            constraint: r
                .get::<_, Option<String>>(7)
                .map(|name| (name, first_char(r.get(8)))),
        })
        .collect())
}

fn attnames(key: &str, rel: &str) -> String {
    format!(
        "ARRAY(SELECT a.attname::text FROM unnest(con.{key}) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_attribute a ON a.attrelid = con.{rel} AND a.attnum = k.attnum ORDER BY k.ord)"
    )
}

async fn referencing_keys<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<ForeignKey>, DbError> {
    let sql = format!(
        "SELECT con.conname::text, n.nspname::text, c.relname::text, {}, {}, con.conindid, \
                con.confupdtype::text, con.confdeltype::text, con.confmatchtype::text, \
                con.condeferrable, con.condeferred, {} \
         FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE con.contype = 'f' AND con.confrelid = $1 ORDER BY n.nspname, c.relname, con.conname",
        attnames("conkey", "conrelid"),
        attnames("confkey", "confrelid"),
        attnames("confdelsetcols", "conrelid"),
    );
    let rows = client.query(&sql, &[&oid]).await?;
    Ok(rows
        .iter()
        .map(|r| ForeignKey {
            name: r.get(0),
            table: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            columns: r.get(3),
            ref_columns: r.get(4),
            index_oid: r.get(5),
            on_update: first_char(r.get(6)),
            on_delete: first_char(r.get(7)),
            match_full: r.get::<_, String>(8) == "f",
            deferrable: r.get(9),
            deferred: r.get(10),
            delete_set_columns: r.get(11),
        })
        .collect())
}

async fn check_constraints<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = $1 AND contype = 'c'",
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn primary_key<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<(String, String)>, DbError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary AND a.attrelid = i.indrelid \
             ORDER BY k.ord",
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn update_triggers<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
) -> Result<Vec<String>, DbError> {
    // tgtype bit 4 (16) is TRIGGER_TYPE_UPDATE.
    let rows = client
        .query(
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal \
             AND tgenabled <> 'D' AND (tgtype & 16) <> 0 ORDER BY tgname",
            &[&oid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn sequences<C: GenericClient + Sync>(
    client: &C,
    oid: u32,
    app: Option<&str>,
) -> Result<Vec<SequenceState>, DbError> {
    // deptype 'a': owned by a serial column (identity columns need no sequence grant).
    let rows = client
        .query(
            "SELECT n.nspname::text, s.relname::text, \
                    $2::text IS NOT NULL AND has_sequence_privilege($2::text, s.oid, 'USAGE') \
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_namespace n ON n.oid = s.relnamespace \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
               AND d.refobjid = $1 AND d.deptype = 'a' ORDER BY 1, 2",
            &[&oid, &app],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SequenceState {
            name: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            app_usage: r.get(2),
        })
        .collect())
}
