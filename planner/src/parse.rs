//! Splitting a query string into statements, with Eddy's own statements.
//!
//! sqlparser's PostgreSQL dialect parses almost everything; Eddy adds only
//! `FLUSH`, recognised by its first keyword before the generic parser runs.

use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

/// One statement of a query string.
#[derive(Debug, Clone)]
pub enum EddyStatement {
    /// `FLUSH`: wait until every earlier DML statement is visible in every view.
    Flush,
    /// Any statement sqlparser understands.
    Sql(Box<Statement>),
}

/// Parses `sql` into its statements. Errors carry sqlparser's line/column.
pub fn parse_sql(sql: &str) -> Result<Vec<EddyStatement>, ParserError> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    let mut out = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token().token == Token::EOF {
            break;
        }
        let is_flush = matches!(&parser.peek_token().token,
            Token::Word(w) if w.keyword == Keyword::FLUSH);
        if is_flush {
            parser.next_token();
            out.push(EddyStatement::Flush);
        } else {
            out.push(EddyStatement::Sql(Box::new(parser.parse_statement()?)));
        }
        let next = parser.peek_token().token;
        if next != Token::EOF && next != Token::SemiColon {
            return parser.expected("end of statement", parser.peek_token());
        }
    }
    Ok(out)
}
