//! `CREATE SINK name FROM relation | AS query WITH (...) [FORMAT ... ENCODE ...]`.

use std::fmt;

use datafusion::sql::sqlparser::ast::{ObjectName, Query};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::parse::{option_list_sql, parse_format, parse_option_list};

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
        write!(f, " WITH {}", option_list_sql(&self.options))
    }
}

/// `WITH (...) [FORMAT ... ENCODE ...]`.
fn sink_options(parser: &mut Parser) -> Result<Vec<(String, String)>, ParserError> {
    let mut options = Vec::new();
    if parser.parse_keyword(Keyword::WITH) {
        options.extend(parse_option_list(parser)?);
    }
    options.extend(parse_format(parser)?);
    Ok(options)
}

/// After `CREATE SINK`.
pub(crate) fn parse_create_sink(parser: &mut Parser) -> Result<CreateSink, ParserError> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let mut options = Vec::new();
    let input = if parser.parse_keyword(Keyword::FROM) {
        let relation = parser.parse_object_name(false)?;
        options.extend(sink_options(parser)?);
        SinkInput::Relation(relation)
    } else {
        parser.expect_keyword(Keyword::AS)?;
        // The query parser would take `FROM t WITH (...)` for table hints:
        // the query ends at the statement's last top-level `WITH (`.
        let mut tokens = Vec::new();
        let mut depth = 0usize;
        let mut split = None;
        loop {
            let token = parser.peek_token();
            match &token.token {
                Token::EOF => break,
                Token::SemiColon if depth == 0 => break,
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                Token::Word(w)
                    if depth == 0
                        && w.keyword == Keyword::WITH
                        && parser.peek_nth_token(1).token == Token::LParen =>
                {
                    split = Some(tokens.len());
                }
                _ => {}
            }
            tokens.push(parser.next_token());
        }
        let rest = tokens.split_off(split.unwrap_or(tokens.len()));
        let mut query = Parser::new(&PostgreSqlDialect {}).with_tokens_with_locations(tokens);
        let parsed = query.parse_query()?;
        if query.peek_token().token != Token::EOF {
            return query.expected("the end of the sink's query", query.peek_token());
        }
        let mut rest = Parser::new(&PostgreSqlDialect {}).with_tokens_with_locations(rest);
        options.extend(sink_options(&mut rest)?);
        if rest.peek_token().token != Token::EOF {
            return rest.expected("the end of CREATE SINK", rest.peek_token());
        }
        SinkInput::Query(parsed)
    };
    Ok(CreateSink {
        name,
        if_not_exists,
        input,
        options,
    })
}
