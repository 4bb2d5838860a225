//! The SQL function runtime's engine: Baetyl v1's handler form `SELECT <projections> [WHERE <condition>]`
//! (no FROM: the row is the message's JSON payload) parsed once with sqlparser and evaluated per message.
//!
//! Supported: `*`, fields and nested fields (`a.b.c`, quoted names), aliases, numbers/strings/booleans/NULL,
//! arithmetic (`+ - * / %`), comparisons, `AND OR NOT`, `||`, `IS [NOT] NULL`, `[NOT] BETWEEN`, `[NOT] IN`,
//! `[NOT] LIKE`, `CASE`, the message functions `topic()`, `qos()`, `clientid()`, `timestamp()`,
//! `functionname()`, `topic(n)` (the n-th topic level, from 1), and the usual string and math functions
//! (see [`call`]). A row whose WHERE is not true gives no output.

use serde_json::{Map, Number, Value};
use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectNamePart,
    SelectItem, SetExpr, Statement, UnaryOperator, Value as SqlValue,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::error::{EvalError, FunctionError};

/// What a message brings besides its payload.
#[derive(Debug, Clone, Default)]
pub struct MessageContext {
    pub topic: String,
    pub qos: u32,
    pub client_id: String,
    pub timestamp: i64,
    pub function_name: String,
}

/// A compiled SQL handler.
#[derive(Debug, Clone)]
pub struct SqlHandler {
    projection: Vec<SelectItem>,
    selection: Option<Expr>,
}

impl SqlHandler {
    /// Parses `sql`; the error says where it is wrong (line and column) and what was expected.
    pub fn parse(sql: &str) -> Result<Self, FunctionError> {
        let bad = |m: String| FunctionError::Sql {
            sql: sql.to_string(),
            message: m,
        };
        let mut stmts =
            Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| bad(e.to_string()))?;
        if stmts.len() != 1 {
            return Err(bad(format!(
                "expected one SELECT statement, found {}",
                stmts.len()
            )));
        }
        let Some(Statement::Query(query)) = stmts.pop() else {
            return Err(bad("only SELECT statements are supported".into()));
        };
        let SetExpr::Select(select) = *query.body else {
            return Err(bad(
                "only a plain SELECT is supported (no UNION, VALUES, ...)".into(),
            ));
        };
        if !select.from.is_empty() {
            return Err(bad(
                "remove the FROM clause: the row is the message payload".into(),
            ));
        }
        if select.group_by != sqlparser::ast::GroupByExpr::Expressions(vec![], vec![])
            || select.having.is_some()
        {
            return Err(bad(
                "GROUP BY and HAVING are not supported: each message is evaluated alone".into(),
            ));
        }
        let handler = SqlHandler {
            projection: select.projection,
            selection: select.selection,
        };
        handler.check()?;
        Ok(handler)
    }

    /// Rejects unknown functions and unsupported expressions at load time, not per message.
    fn check(&self) -> Result<(), FunctionError> {
        let probe = MessageContext::default();
        let row = Value::Object(Map::new());
        for item in &self.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    check_expr(e, &row, &probe)?
                }
                SelectItem::Wildcard(_) => {}
                other => return Err(unsupported("projection", other).into()),
            }
        }
        if let Some(w) = &self.selection {
            check_expr(w, &row, &probe)?;
        }
        Ok(())
    }

    /// Evaluates the handler on one message. `Ok(None)`: filtered out by WHERE.
    /// A payload that is not JSON is an error (the manager publishes the error payload).
    pub fn run(
        &self,
        payload: &[u8],
        ctx: &MessageContext,
    ) -> Result<Option<Value>, FunctionError> {
        let row: Value = if payload.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(payload).map_err(FunctionError::Payload)?
        };
        if let Some(w) = &self.selection
            && !truthy(&eval(w, &row, ctx)?)
        {
            return Ok(None);
        }
        let mut out = Map::new();
        for item in &self.projection {
            match item {
                SelectItem::Wildcard(_) => match &row {
                    Value::Object(m) => out.extend(m.iter().map(|(k, v)| (k.clone(), v.clone()))),
                    other => {
                        out.insert("payload".into(), other.clone());
                    }
                },
                SelectItem::UnnamedExpr(e) => {
                    out.insert(column_name(e), eval(e, &row, ctx)?);
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    out.insert(alias.value.clone(), eval(expr, &row, ctx)?);
                }
                other => return Err(unsupported("projection", other).into()),
            }
        }
        Ok(Some(Value::Object(out)))
    }
}

fn unsupported(what: &'static str, text: impl std::fmt::Display) -> EvalError {
    EvalError::Unsupported {
        what,
        text: text.to_string(),
    }
}

fn check_expr(e: &Expr, row: &Value, ctx: &MessageContext) -> Result<(), EvalError> {
    // Evaluating on an empty row exercises every operator and function name; type errors from the empty
    // row itself (NULL arithmetic is NULL, not an error) cannot happen, so any error is a real one.
    eval(e, row, ctx).map(|_| ())
}

/// The output name of an unaliased projection: the last part of a field path, else the expression text.
fn column_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map(|i| i.value.clone()).unwrap_or_default()
        }
        other => other.to_string(),
    }
}

fn lookup<'a>(row: &'a Value, path: impl Iterator<Item = &'a str>) -> Value {
    let mut cur = row;
    for key in path {
        match cur {
            Value::Object(m) => match m.get(key) {
                Some(v) => cur = v,
                None => return Value::Null,
            },
            Value::Array(a) => match key.parse::<usize>().ok().and_then(|i| a.get(i)) {
                Some(v) => cur = v,
                None => return Value::Null,
            },
            _ => return Value::Null,
        }
    }
    cur.clone()
}

fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::Number(Number::from(v as i64))
    } else {
        Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Null => false,
        _ => true,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => None,
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => as_f64(a)?.partial_cmp(&as_f64(b)?),
    }
}

fn values_equal(a: &Value, b: &Value) -> Option<bool> {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => None,
        (Value::Number(_), _) | (_, Value::Number(_)) => {
            Some(compare(a, b)? == std::cmp::Ordering::Equal)
        }
        _ => Some(a == b),
    }
}

fn literal(v: &SqlValue) -> Result<Value, EvalError> {
    Ok(match v {
        SqlValue::Number(n, _) => {
            let f: f64 = n.parse().map_err(|_| EvalError::Number(n.clone()))?;
            num(f)
        }
        SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => {
            Value::String(s.clone())
        }
        SqlValue::Boolean(b) => Value::Bool(*b),
        SqlValue::Null => Value::Null,
        other => return Err(unsupported("literal", other)),
    })
}

fn like(text: &str, pattern: &str) -> bool {
    // % = any run, _ = one character; iterative match with backtracking on the last %.
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut ti, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

pub fn eval(e: &Expr, row: &Value, ctx: &MessageContext) -> Result<Value, EvalError> {
    Ok(match e {
        Expr::Identifier(i) => lookup(row, std::iter::once(i.value.as_str())),
        Expr::CompoundIdentifier(parts) => lookup(row, parts.iter().map(|i| i.value.as_str())),
        Expr::Value(v) => literal(&v.value)?,
        Expr::Nested(inner) => eval(inner, row, ctx)?,
        Expr::IsNull(inner) => Value::Bool(eval(inner, row, ctx)?.is_null()),
        Expr::IsNotNull(inner) => Value::Bool(!eval(inner, row, ctx)?.is_null()),
        Expr::IsTrue(inner) => Value::Bool(truthy(&eval(inner, row, ctx)?)),
        Expr::IsFalse(inner) => Value::Bool(!truthy(&eval(inner, row, ctx)?)),
        Expr::UnaryOp { op, expr } => {
            let v = eval(expr, row, ctx)?;
            match op {
                UnaryOperator::Not => Value::Bool(!truthy(&v)),
                UnaryOperator::Minus => as_f64(&v).map(|x| num(-x)).unwrap_or(Value::Null),
                UnaryOperator::Plus => v,
                other => return Err(unsupported("operator", other)),
            }
        }
        Expr::BinaryOp { left, op, right } => {
            binary(op, eval(left, row, ctx)?, || eval(right, row, ctx))?
        }
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let v = eval(expr, row, ctx)?;
            let (lo, hi) = (eval(low, row, ctx)?, eval(high, row, ctx)?);
            match (compare(&v, &lo), compare(&v, &hi)) {
                (Some(a), Some(b)) => Value::Bool((a.is_ge() && b.is_le()) != *negated),
                _ => Value::Null,
            }
        }
        Expr::In {
            expr,
            target,
            negated,
            ..
        } => {
            let sqlparser::ast::InTarget::List(list) = target else {
                return Err(EvalError::InTarget(target.to_string()));
            };
            let v = eval(expr, row, ctx)?;
            let mut found = false;
            for item in list {
                if values_equal(&v, &eval(item, row, ctx)?) == Some(true) {
                    found = true;
                }
            }
            Value::Bool(found != *negated)
        }
        Expr::Like {
            negated,
            expr,
            pattern,
            ..
        } => {
            let v = eval(expr, row, ctx)?;
            let p = eval(pattern, row, ctx)?;
            if v.is_null() || p.is_null() {
                Value::Null
            } else {
                Value::Bool(like(&as_text(&v), &as_text(&p)) != *negated)
            }
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            let base = operand.as_ref().map(|o| eval(o, row, ctx)).transpose()?;
            for cw in conditions {
                let c = eval(&cw.condition, row, ctx)?;
                let hit = match &base {
                    Some(b) => values_equal(b, &c) == Some(true),
                    None => truthy(&c),
                };
                if hit {
                    return eval(&cw.result, row, ctx);
                }
            }
            match else_result {
                Some(e) => eval(e, row, ctx)?,
                None => Value::Null,
            }
        }
        Expr::Function(f) => {
            let name = f
                .name
                .0
                .iter()
                .map(|p| match p {
                    ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
                    other => other.to_string().to_ascii_lowercase(),
                })
                .collect::<Vec<_>>()
                .join(".");
            let args = match &f.args {
                FunctionArguments::None => Vec::new(),
                FunctionArguments::List(list) => list
                    .args
                    .iter()
                    .map(|a| match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => eval(e, row, ctx),
                        other => Err(EvalError::Argument {
                            function: name.clone(),
                            argument: other.to_string(),
                        }),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                FunctionArguments::Subquery(_) => {
                    return Err(EvalError::Subquery(name));
                }
            };
            call(&name, &args, ctx)?
        }
        other => return Err(unsupported("expression", other)),
    })
}

fn binary(
    op: &BinaryOperator,
    l: Value,
    r: impl FnOnce() -> Result<Value, EvalError>,
) -> Result<Value, EvalError> {
    use BinaryOperator as B;
    // AND/OR short-circuit.
    match op {
        B::And => return Ok(Value::Bool(truthy(&l) && truthy(&r()?))),
        B::Or => return Ok(Value::Bool(truthy(&l) || truthy(&r()?))),
        _ => {}
    }
    let r = r()?;
    let arith = |f: fn(f64, f64) -> Option<f64>| match (as_f64(&l), as_f64(&r)) {
        (Some(a), Some(b)) => f(a, b).map(num).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    Ok(match op {
        B::Plus => arith(|a, b| Some(a + b)),
        B::Minus => arith(|a, b| Some(a - b)),
        B::Multiply => arith(|a, b| Some(a * b)),
        B::Divide => arith(|a, b| if b == 0.0 { None } else { Some(a / b) }),
        B::Modulo => arith(|a, b| if b == 0.0 { None } else { Some(a % b) }),
        B::StringConcat => Value::String(format!("{}{}", as_text(&l), as_text(&r))),
        B::Eq => values_equal(&l, &r).map(Value::Bool).unwrap_or(Value::Null),
        B::NotEq => values_equal(&l, &r)
            .map(|b| Value::Bool(!b))
            .unwrap_or(Value::Null),
        B::Lt => compare(&l, &r)
            .map(|o| Value::Bool(o.is_lt()))
            .unwrap_or(Value::Null),
        B::LtEq => compare(&l, &r)
            .map(|o| Value::Bool(o.is_le()))
            .unwrap_or(Value::Null),
        B::Gt => compare(&l, &r)
            .map(|o| Value::Bool(o.is_gt()))
            .unwrap_or(Value::Null),
        B::GtEq => compare(&l, &r)
            .map(|o| Value::Bool(o.is_ge()))
            .unwrap_or(Value::Null),
        other => return Err(unsupported("operator", other)),
    })
}

/// The functions a handler may call.
fn call(name: &str, args: &[Value], ctx: &MessageContext) -> Result<Value, EvalError> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
    let text = |i: usize| as_text(&arg(i));
    let f = |i: usize| as_f64(&arg(i));
    let need = |n: usize| {
        if args.len() < n {
            Err(EvalError::Arity {
                function: name.to_string(),
                needed: n,
                got: args.len(),
            })
        } else {
            Ok(())
        }
    };
    let math = |g: fn(f64) -> f64| -> Result<Value, EvalError> {
        need(1)?;
        Ok(f(0).map(|x| num(g(x))).unwrap_or(Value::Null))
    };
    Ok(match name {
        "topic" => match f(0) {
            Some(n) if n >= 1.0 => ctx
                .topic
                .split('/')
                .nth(n as usize - 1)
                .map(|s| Value::String(s.into()))
                .unwrap_or(Value::Null),
            _ => Value::String(ctx.topic.clone()),
        },
        "qos" => Value::from(ctx.qos),
        "clientid" => Value::String(ctx.client_id.clone()),
        "timestamp" => Value::from(ctx.timestamp),
        "functionname" => Value::String(ctx.function_name.clone()),
        "upper" => {
            need(1)?;
            Value::String(text(0).to_uppercase())
        }
        "lower" => {
            need(1)?;
            Value::String(text(0).to_lowercase())
        }
        "length" | "char_length" => {
            need(1)?;
            Value::from(text(0).chars().count())
        }
        "trim" => {
            need(1)?;
            Value::String(text(0).trim().to_string())
        }
        "concat" => Value::String(args.iter().map(as_text).collect()),
        "substring" | "substr" => {
            need(2)?;
            let s: Vec<char> = text(0).chars().collect();
            let start = f(1).unwrap_or(1.0).max(1.0) as usize - 1;
            let len = f(2).map(|l| l.max(0.0) as usize).unwrap_or(usize::MAX);
            Value::String(s.iter().skip(start).take(len).collect())
        }
        "replace" => {
            need(3)?;
            Value::String(text(0).replace(&text(1), &text(2)))
        }
        "startswith" => {
            need(2)?;
            Value::Bool(text(0).starts_with(&text(1)))
        }
        "endswith" => {
            need(2)?;
            Value::Bool(text(0).ends_with(&text(1)))
        }
        "abs" => math(f64::abs)?,
        "ceil" | "ceiling" => math(f64::ceil)?,
        "floor" => math(f64::floor)?,
        "sqrt" => math(f64::sqrt)?,
        "exp" => math(f64::exp)?,
        "ln" => math(f64::ln)?,
        "log10" => math(f64::log10)?,
        "round" => {
            need(1)?;
            let digits = f(1).unwrap_or(0.0) as i32;
            let m = 10f64.powi(digits);
            f(0).map(|x| num((x * m).round() / m))
                .unwrap_or(Value::Null)
        }
        "power" | "pow" => {
            need(2)?;
            match (f(0), f(1)) {
                (Some(a), Some(b)) => num(a.powf(b)),
                _ => Value::Null,
            }
        }
        "mod" => {
            need(2)?;
            match (f(0), f(1)) {
                (Some(a), Some(b)) if b != 0.0 => num(a % b),
                _ => Value::Null,
            }
        }
        "coalesce" => args
            .iter()
            .find(|v| !v.is_null())
            .cloned()
            .unwrap_or(Value::Null),
        "now" => Value::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
        other => return Err(EvalError::UnknownFunction(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> MessageContext {
        MessageContext {
            topic: "sensors/room1/temp".into(),
            qos: 1,
            client_id: "dev-7".into(),
            timestamp: 1_700_000_000,
            function_name: "filter".into(),
        }
    }

    fn run(sql: &str, payload: Value) -> Option<Value> {
        SqlHandler::parse(sql)
            .unwrap()
            .run(payload.to_string().as_bytes(), &ctx())
            .unwrap()
    }

    #[test]
    fn v1_handler_form() {
        let sql = "select qos() as qos, topic() as topic, * where id < 10";
        assert_eq!(
            run(sql, json!({"id": 3, "name": "a"})),
            Some(json!({"qos": 1, "topic": "sensors/room1/temp", "id": 3, "name": "a"}))
        );
        assert_eq!(
            run(sql, json!({"id": 12})),
            None,
            "WHERE false filters the message"
        );
        assert_eq!(
            run(sql, json!({"name": "no id"})),
            None,
            "NULL comparison is not true"
        );
    }

    #[test]
    fn nested_fields_arithmetic_and_functions() {
        let out = run(
            "SELECT d.t.c AS c, d.t.c * 9 / 5 + 32 AS f, upper(name) AS n, length(name) AS l, round(d.t.c / 3, 2) AS r, \
             topic(2) AS room, clientid() AS who, timestamp() AS ts, name || '!' AS bang, d.list.\"1\" AS second \
             WHERE d.t.c BETWEEN 10 AND 30 AND name LIKE 'th%' AND NOT (kind IN ('x', 'y'))",
            json!({"d": {"t": {"c": 20}, "list": [5, 6]}, "name": "thermo", "kind": "z"}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"c": 20, "f": 68, "n": "THERMO", "l": 6, "r": 6.67, "room": "room1", "who": "dev-7", "ts": 1700000000, "bang": "thermo!", "second": 6})
        );
    }

    #[test]
    fn case_and_null_handling() {
        let sql = "SELECT CASE WHEN t > 30 THEN 'hot' WHEN t > 10 THEN 'ok' ELSE 'cold' END AS level, missing IS NULL AS m, coalesce(missing, 0) AS z";
        assert_eq!(
            run(sql, json!({"t": 35})),
            Some(json!({"level": "hot", "m": true, "z": 0}))
        );
        assert_eq!(
            run(sql, json!({"t": 5})),
            Some(json!({"level": "cold", "m": true, "z": 0}))
        );
        assert_eq!(
            run("SELECT t / 0 AS x", json!({"t": 1})),
            Some(json!({"x": null}))
        );
    }

    #[test]
    fn invalid_sql_is_rejected_at_load_with_position() {
        let err = SqlHandler::parse("select a, from where")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Line: 1") && err.contains("Column"), "{err}");
        let err = SqlHandler::parse("select nosuch(a) as x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown function nosuch()"), "{err}");
        let err = SqlHandler::parse("select a from t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("FROM"), "{err}");
        assert!(SqlHandler::parse("delete from t").is_err());
    }

    #[test]
    fn non_json_payload_is_an_error_not_a_crash() {
        let h = SqlHandler::parse("select *").unwrap();
        let err = h.run(b"\xff not json", &ctx()).unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
    }

    #[test]
    fn like_patterns() {
        assert!(like("thermo", "th%"));
        assert!(like("thermo", "%er%"));
        assert!(like("abc", "a_c"));
        assert!(!like("abc", "a_d"));
        assert!(like("", "%"));
        assert!(!like("abc", "ab"));
    }
}
