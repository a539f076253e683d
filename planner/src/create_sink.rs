//! `CREATE SINK name FROM relation | AS query WITH (...) [FORMAT ... ENCODE ...]`.

use std::fmt;

use datafusion::sql::sqlparser::ast::{ObjectName, Query};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};

use crate::parse::{parse_format, parse_option_list};

/// What a sink writes.
#[derive(Debug, Clone)]
pub enum SinkInput {
    /// `FROM relation`: its changes.
    Relation(ObjectName),
    /// `AS query`: the changes of its result.
    Query(Box<Query>),
}

/// `CREATE SINK`.
#[derive(Debug, Clone)]
pub struct CreateSink {
    /// Sink name.
    pub name: ObjectName,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// What it writes.
    pub input: SinkInput,
    /// `WITH (...)`, then `format` / `encode` from `FORMAT ... ENCODE ...`.
    pub options: Vec<(String, String)>,
}

impl fmt::Display for CreateSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CREATE SINK ")?;
        if self.if_not_exists {
            write!(f, "IF NOT EXISTS ")?;
        }
        match &self.input {
            SinkInput::Relation(r) => write!(f, "{} FROM {r}", self.name)?,
            SinkInput::Query(q) => write!(f, "{} AS {q}", self.name)?,
        }
        let options: Vec<String> = self
            .options
            .iter()
            .map(|(k, v)| format!("{k} = '{}'", v.replace('\'', "''")))
            .collect();
        write!(f, " WITH ({})", options.join(", "))
    }
}

/// After `CREATE SINK`.
pub(crate) fn parse_create_sink(parser: &mut Parser) -> Result<CreateSink, ParserError> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let input = if parser.parse_keyword(Keyword::FROM) {
        SinkInput::Relation(parser.parse_object_name(false)?)
    } else {
        parser.expect_keyword(Keyword::AS)?;
        SinkInput::Query(parser.parse_query()?)
    };
    let mut options = Vec::new();
    if parser.parse_keyword(Keyword::WITH) {
        options.extend(parse_option_list(parser)?);
    }
    options.extend(parse_format(parser)?);
    Ok(CreateSink {
        name,
        if_not_exists,
        input,
        options,
    })
}
