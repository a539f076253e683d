//! Splitting a query string into statements, with Eddy's own statements.
//!
//! sqlparser's PostgreSQL dialect parses almost everything. Eddy adds
//! `FLUSH`, `CREATE SOURCE ... WITH (...)` (with `WATERMARK FOR` and
//! `name AS PROCTIME()` columns),
//! `DROP SOURCE`, `SHOW SOURCES`, `CREATE SINK` (see [`crate::create_sink`]),
//! `DROP SINK`, `SHOW SINKS`, `SHOW JOBS` and a trailing `EMIT ON WINDOW CLOSE` on
//! `CREATE MATERIALIZED VIEW`, recognised by their leading keywords before
//! the generic parser runs. Window table functions are rewritten afterwards
//! (see [`crate::window`]).

use std::borrow::Cow;
use std::fmt;

use datafusion::sql::sqlparser::ast::{
    ColumnDef, DataType, Expr, Ident, ObjectName, Statement, TimezoneInfo, Value,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::create_sink::{CreateSink, parse_create_sink};

/// One statement of a query string.
#[derive(Debug, Clone)]
pub enum EddyStatement {
    /// `FLUSH`: wait until every earlier DML statement is visible in every view.
    Flush,
    /// `CREATE SOURCE`.
    CreateSource(Box<CreateSource>),
    /// `DROP SOURCE [IF EXISTS] names [CASCADE]`.
    DropSource {
        /// Source names.
        names: Vec<ObjectName>,
        /// `IF EXISTS`.
        if_exists: bool,
        /// `CASCADE`.
        cascade: bool,
    },
    /// `SHOW SOURCES`.
    ShowSources,
    /// `CREATE SINK`.
    CreateSink(Box<CreateSink>),
    /// `DROP SINK [IF EXISTS] names`.
    DropSink {
        /// Sink names.
        names: Vec<ObjectName>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `SHOW SINKS`.
    ShowSinks,
    /// `SHOW JOBS`.
    ShowJobs,
    /// `CREATE MATERIALIZED VIEW ... EMIT ON WINDOW CLOSE`.
    EmitOnWindowClose(Box<Statement>),
    /// Any statement sqlparser understands.
    Sql(Box<Statement>),
}

/// `CREATE SOURCE name (columns [, WATERMARK FOR col AS expr]) WITH (options)`;
/// a column may be `name AS PROCTIME()`, the time the row was read.
#[derive(Debug, Clone)]
pub struct CreateSource {
    /// Source name.
    pub name: ObjectName,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// Declared columns (a processing-time column as a `TIMESTAMP` one).
    pub columns: Vec<ColumnDef>,
    /// The column declared `name AS PROCTIME()`, if one is.
    pub proctime: Option<Ident>,
    /// `WATERMARK FOR column AS expr`.
    pub watermark: Option<(Ident, Expr)>,
    /// `WITH (key = 'value', ...)`; keys lower-cased, dotted keys kept whole.
    pub options: Vec<(String, String)>,
}

impl fmt::Display for CreateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CREATE SOURCE ")?;
        if self.if_not_exists {
            write!(f, "IF NOT EXISTS ")?;
        }
        write!(f, "{} (", self.name)?;
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| match &self.proctime {
                Some(p) if *p == c.name => format!("{p} AS PROCTIME()"),
                _ => c.to_string(),
            })
            .collect();
        if let Some((col, expr)) = &self.watermark {
            parts.push(format!("WATERMARK FOR {col} AS {expr}"));
        }
        write!(
            f,
            "{}) WITH {}",
            parts.join(", "),
            option_list_sql(&self.options)
        )
    }
}

impl fmt::Display for EddyStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EddyStatement::Flush => write!(f, "FLUSH"),
            EddyStatement::CreateSource(c) => write!(f, "{c}"),
            EddyStatement::DropSource {
                names,
                if_exists,
                cascade,
            } => {
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                write!(
                    f,
                    "DROP SOURCE {}{}{}",
                    if *if_exists { "IF EXISTS " } else { "" },
                    names.join(", "),
                    if *cascade { " CASCADE" } else { "" }
                )
            }
            EddyStatement::ShowSources => write!(f, "SHOW SOURCES"),
            EddyStatement::CreateSink(c) => write!(f, "{c}"),
            EddyStatement::DropSink { names, if_exists } => {
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                let if_exists = if *if_exists { "IF EXISTS " } else { "" };
                write!(f, "DROP SINK {if_exists}{}", names.join(", "))
            }
            EddyStatement::ShowSinks => write!(f, "SHOW SINKS"),
            EddyStatement::ShowJobs => write!(f, "SHOW JOBS"),
            EddyStatement::EmitOnWindowClose(s) => write!(f, "{s} EMIT ON WINDOW CLOSE"),
            EddyStatement::Sql(s) => write!(f, "{s}"),
        }
    }
}

/// Consumes `words` if they come next (not necessarily keywords to
/// sqlparser); false, consuming nothing, otherwise.
fn take_words(parser: &mut Parser, words: &[&str]) -> bool {
    let next = words.iter().enumerate().all(|(i, w)| {
        matches!(&parser.peek_nth_token(i).token,
            Token::Word(t) if t.value.eq_ignore_ascii_case(w))
    });
    if next {
        for _ in words {
            parser.next_token();
        }
    }
    next
}

/// Whether `name AS PROCTIME(` comes next.
fn is_proctime_column(parser: &Parser) -> bool {
    let word = |i: usize, w: &str| matches!(&parser.peek_nth_token(i).token, Token::Word(t) if t.value.eq_ignore_ascii_case(w));
    matches!(parser.peek_nth_token(0).token, Token::Word(_))
        && word(1, "AS")
        && word(2, "PROCTIME")
        && parser.peek_nth_token(3).token == Token::LParen
}

fn parse_create_source(parser: &mut Parser) -> Result<CreateSource, ParserError> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    parser.expect_token(&Token::LParen)?;
    let mut columns = Vec::new();
    let mut watermark = None;
    let mut proctime = None;
    loop {
        if take_words(parser, &["WATERMARK", "FOR"]) {
            let column = parser.parse_identifier()?;
            parser.expect_keyword(Keyword::AS)?;
            watermark = Some((column, parser.parse_expr()?));
        } else if is_proctime_column(parser) {
            let name = parser.parse_identifier()?;
            take_words(parser, &["AS", "PROCTIME"]);
            parser.expect_token(&Token::LParen)?;
            parser.expect_token(&Token::RParen)?;
            if proctime.is_some() {
                return Err(ParserError::ParserError(
                    "a source has at most one PROCTIME() column".into(),
                ));
            }
            columns.push(ColumnDef {
                name: name.clone(),
                data_type: DataType::Timestamp(None, TimezoneInfo::None),
                options: vec![],
            });
            proctime = Some(name);
        } else {
            columns.push(parser.parse_column_def()?);
        }
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    let mut options = Vec::new();
    // `INCLUDE partition [AS name]`: message metadata as a column.
    while parser.parse_keyword(Keyword::INCLUDE) {
        let kind = parser.parse_identifier()?.value.to_lowercase();
        let column = if parser.parse_keyword(Keyword::AS) {
            parser.parse_identifier()?.value.to_lowercase()
        } else {
            format!("_{kind}")
        };
        options.push((format!("include.{kind}"), column));
    }
    if parser.parse_keyword(Keyword::WITH) {
        options.extend(parse_option_list(parser)?);
    }
    options.extend(parse_format(parser)?);
    Ok(CreateSource {
        name,
        if_not_exists,
        columns,
        proctime,
        watermark,
        options,
    })
}

/// `FORMAT PLAIN ENCODE CSV (delimiter = ';')`, if there: as options
/// `format`, `encode` and `csv.delimiter`.
pub(crate) fn parse_format(parser: &mut Parser) -> Result<Vec<(String, String)>, ParserError> {
    let mut options = Vec::new();
    if parser.parse_keyword(Keyword::FORMAT) {
        let format = parser.parse_identifier()?.value.to_lowercase();
        options.push(("format".into(), format));
        if take_words(parser, &["ENCODE"]) {
            let encode = parser.parse_identifier()?.value.to_lowercase();
            if parser.peek_token().token == Token::LParen {
                for (key, value) in parse_option_list(parser)? {
                    options.push((format!("{encode}.{key}"), value));
                }
            }
            options.push(("encode".into(), encode));
        }
    }
    Ok(options)
}

/// An option's value as text: a string's contents, a number's digits.
pub fn option_value(value: &Value) -> String {
    match value {
        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
        Value::Number(n, _) => n.clone(),
        other => other.to_string(),
    }
}

/// Options as [`parse_option_list`] reads them back: `(key = 'value', ...)`.
pub(crate) fn option_list_sql(options: &[(String, String)]) -> String {
    let options: Vec<String> = options
        .iter()
        .map(|(k, v)| format!("{k} = '{}'", v.replace('\'', "''")))
        .collect();
    format!("({})", options.join(", "))
}

/// `(key = value, ...)`; keys lower-cased, dotted keys kept whole.
pub(crate) fn parse_option_list(parser: &mut Parser) -> Result<Vec<(String, String)>, ParserError> {
    let mut options = Vec::new();
    parser.expect_token(&Token::LParen)?;
    loop {
        let mut key = match parser.next_token().token {
            Token::Word(w) => w.value.to_lowercase(),
            Token::SingleQuotedString(s) => s,
            _ => return parser.expected("an option name", parser.peek_token()),
        };
        while parser.consume_token(&Token::Period) {
            key.push('.');
            key.push_str(&parser.parse_identifier()?.value.to_lowercase());
        }
        parser.expect_token(&Token::Eq)?;
        options.push((key, option_value(&parser.parse_value()?.value)));
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    Ok(options)
}

fn parse_drop_source(parser: &mut Parser) -> Result<EddyStatement, ParserError> {
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let mut names = vec![parser.parse_object_name(false)?];
    while parser.consume_token(&Token::Comma) {
        names.push(parser.parse_object_name(false)?);
    }
    let cascade = parser.parse_keyword(Keyword::CASCADE);
    if !cascade {
        let _restrict = parser.parse_keyword(Keyword::RESTRICT);
    }
    Ok(EddyStatement::DropSource {
        names,
        if_exists,
        cascade,
    })
}

fn parse_statement(parser: &mut Parser) -> Result<EddyStatement, ParserError> {
    if take_words(parser, &["FLUSH"]) {
        return Ok(EddyStatement::Flush);
    }
    if take_words(parser, &["CREATE", "SOURCE"]) {
        return Ok(EddyStatement::CreateSource(Box::new(parse_create_source(
            parser,
        )?)));
    }
    if take_words(parser, &["DROP", "SOURCE"]) {
        return parse_drop_source(parser);
    }
    if take_words(parser, &["SHOW", "SOURCES"]) {
        return Ok(EddyStatement::ShowSources);
    }
    if take_words(parser, &["CREATE", "SINK"]) {
        return Ok(EddyStatement::CreateSink(Box::new(parse_create_sink(
            parser,
        )?)));
    }
    if take_words(parser, &["DROP", "SINK"]) {
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let names = parser.parse_comma_separated(|p| p.parse_object_name(false))?;
        return Ok(EddyStatement::DropSink { names, if_exists });
    }
    if take_words(parser, &["SHOW", "SINKS"]) {
        return Ok(EddyStatement::ShowSinks);
    }
    if take_words(parser, &["SHOW", "JOBS"]) {
        return Ok(EddyStatement::ShowJobs);
    }
    Ok(EddyStatement::Sql(Box::new(parser.parse_statement()?)))
}

/// Removes every `EMIT ON WINDOW CLOSE` from `sql` (sqlparser would read
/// `EMIT` as a table alias) and returns the indices of the statements that
/// carried one.
fn strip_emit_on_window_close(sql: &str) -> (Cow<'_, str>, Vec<usize>) {
    if !sql.to_ascii_uppercase().contains("EMIT") {
        return (Cow::Borrowed(sql), vec![]);
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return (Cow::Borrowed(sql), vec![]);
    };
    let words: Vec<(usize, &Token)> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t, Token::Whitespace(_)))
        .collect();
    let is = |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
    let mut removed = vec![false; tokens.len()];
    let mut statements = Vec::new();
    // Statement index as the parser counts: empty statements do not count.
    let mut statement = 0;
    let mut in_statement = false;
    for (k, (_, t)) in words.iter().enumerate() {
        if **t == Token::SemiColon {
            if in_statement {
                statement += 1;
            }
            in_statement = false;
            continue;
        }
        in_statement = true;
        let phrase = ["EMIT", "ON", "WINDOW", "CLOSE"];
        if k + 4 <= words.len()
            && phrase
                .iter()
                .zip(&words[k..k + 4])
                .all(|(w, (_, t))| is(t, w))
        {
            for (i, _) in &words[k..k + 4] {
                removed[*i] = true;
            }
            statements.push(statement);
        }
    }
    if statements.is_empty() {
        return (Cow::Borrowed(sql), vec![]);
    }
    let text = tokens
        .iter()
        .zip(&removed)
        .filter(|(_, r)| !**r)
        .map(|(t, _)| t.to_string())
        .collect();
    (Cow::Owned(text), statements)
}

/// Parses `sql` into its statements. Errors carry sqlparser's line/column.
pub fn parse_sql(sql: &str) -> Result<Vec<EddyStatement>, ParserError> {
    let dialect = PostgreSqlDialect {};
    let sql = crate::window::flink_to_eddy_spelling(sql);
    let (sql, emitting) = strip_emit_on_window_close(&sql);
    let mut parser = Parser::new(&dialect).try_with_sql(&sql)?;
    let mut out = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            break;
        }
        let stmt = parse_statement(&mut parser)?;
        out.push(match stmt {
            EddyStatement::Sql(s) if emitting.contains(&out.len()) => {
                if !matches!(s.as_ref(), Statement::CreateView(v) if v.materialized) {
                    return Err(ParserError::ParserError(
                        "EMIT ON WINDOW CLOSE only ends a CREATE MATERIALIZED VIEW".into(),
                    ));
                }
                EddyStatement::EmitOnWindowClose(s)
            }
            other => other,
        });
        let next = parser.peek_token().token;
        if next != Token::EOF && next != Token::SemiColon {
            return parser.expected("end of statement", parser.peek_token());
        }
    }
    Ok(out)
}
