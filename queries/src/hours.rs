//! Hour partitions as they are spelled on disk.
//!
//! The collector writes hours with two digits (`hour=03`). For an equality filter on a partition
//! column, DataFusion's listing table lists the one directory the literal spells (`hour=3`), which
//! does not exist for hours 0 to 9: `WHERE date = '2026-11-22' AND hour = 3` found no rows.
//! [`PaddedHours`] wraps a table and hands it `hour IN (3)` instead, which the listing table
//! prunes by each directory's parsed value, so the query still opens only that hour's files.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, Statistics};
use datafusion::datasource::TableType;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use switchboard_bus::tables::HOUR;

/// A table whose `hour = n` filters reach it as `hour IN (n)`; everything else passes through.
#[derive(Debug)]
pub(crate) struct PaddedHours(pub(crate) Arc<dyn TableProvider>);

/// `filter` with every `hour = <literal>` (either way round) written `hour IN (<literal>)`.
fn respell(filter: &Expr) -> Expr {
    let rewritten = filter.clone().transform_up(|e| {
        let Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) = &e else {
            return Ok(Transformed::no(e));
        };
        let (column, literal) = match (left.as_ref(), right.as_ref()) {
            (c @ Expr::Column(col), l @ Expr::Literal(..)) | (l @ Expr::Literal(..), c @ Expr::Column(col))
                if col.name == HOUR =>
            {
                (c.clone(), l.clone())
            }
            _ => return Ok(Transformed::no(e)),
        };
        Ok(Transformed::yes(Expr::InList(InList::new(Box::new(column), vec![literal], false))))
    });
    // The closure never fails; a failure would leave the filter as it was, which is still correct.
    rewritten.map(|t| t.data).unwrap_or_else(|_| filter.clone())
}

#[async_trait]
impl TableProvider for PaddedHours {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        self.0.table_type()
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        let respelled: Vec<Expr> = filters.iter().map(|f| respell(f)).collect();
        self.0.supports_filters_pushdown(&respelled.iter().collect::<Vec<_>>())
    }

    fn statistics(&self) -> Option<Statistics> {
        self.0.statistics()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let respelled: Vec<Expr> = filters.iter().map(respell).collect();
        self.0.scan(state, projection, &respelled, limit).await
    }

    async fn scan_with_args<'a>(&self, state: &dyn Session, args: ScanArgs<'a>) -> Result<ScanResult> {
        let respelled: Option<Vec<Expr>> = args.filters().map(|f| f.iter().map(respell).collect());
        let args = args.with_filters(respelled.as_deref());
        self.0.scan_with_args(state, args).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn hour_equalities_become_lists_and_the_rest_stays() {
        let f = col("date").eq(lit("2026-11-22")).and(col("hour").eq(lit(3)));
        assert_eq!(respell(&f), col("date").eq(lit("2026-11-22")).and(col("hour").in_list(vec![lit(3)], false)));
        assert_eq!(respell(&lit(3).eq(col("hour"))), col("hour").in_list(vec![lit(3)], false));
        let other = col("hour").gt(lit(3)).or(col("seq").eq(lit(3)));
        assert_eq!(respell(&other), other);
    }
}
