// Package wire holds the low-level pieces of the PostgreSQL wire protocol
// that the proxy needs on its hot path: a reader that hands out raw
// messages without decoding them, a write buffer, and PostgreSQL errors
// with SQLSTATEs.
//
// Message structs and their encodings come from
// github.com/jackc/pgx/v5/pgproto3; this package only avoids decoding and
// re-encoding the messages the proxy forwards untouched (DataRow,
// CommandComplete, ...), which is most of them.
package wire
