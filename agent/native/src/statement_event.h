// Statement events the relay encodes itself. For a simple query it repeats on a remembered decision
// (see Session::held in relay.cc), everything in the event but the text and the outcome is fixed by
// the decision; for an execution of a prepared statement, everything but the bound values and the
// outcome. The handler encodes those fields once, as a template (proto/session-events.ts
// StatementTemplate; an execution's has the statement's text inside), and the relay writes the
// Statement field of each event around them, so that the JavaScript thread only frames and seals
// it. Only when the result is provably the one the handler would write: the text and each bound
// value need no redaction (the Redactor's own pre-checks come up empty), they are valid UTF-8
// (JavaScript would decode anything else with replacement characters), and the command tag is
// plain. Anything else goes to the handler as before (a kAudited record).
#pragma once
#include <stddef.h>
#include <node_api.h>
#include <stdint.h>

#include "pgmsg.h"

#include <array>
#include <string>
#include <vector>

// agent/redact/redactor.ts Redactor.precheck(): a text in which none of this is found comes back
// from redact() unchanged.
struct RedactionPrecheck {
  std::vector<std::string> needles;  // lower-case ASCII, found regardless of ASCII case
  std::vector<uint32_t> digit_runs;  // n ASCII digits, each pair at most one ' ' or '-' apart
  std::vector<std::string> exact;    // the job's secrets in every encoding, byte for byte

  // From the packed form agent/native/relay.ts packPrecheck writes: entries of [u8 kind][u32 LE
  // n][n bytes], kind 0 a needle, 1 a digit run of n (no bytes), 2 an exact form. False if malformed.
  bool parse(const uint8_t* p, size_t n);
  // Whether `text` provably needs no redaction: one pass over it for every needle and exact form.
  bool clean(const uint8_t* text, size_t n) const;

 private:
  // needles and exact sorted by first byte; the entries starting with byte b are
  // [needle_at_[b], needle_at_[b + 1]) (and likewise exact_at_), so that each byte of a text is
  // tried only against the entries that can start there.
  std::vector<uint32_t> needle_at_ = std::vector<uint32_t>(257, 0);
  std::vector<uint32_t> exact_at_ = std::vector<uint32_t>(257, 0);
  // A two-byte prefilter in front of those loops: pair_[first_[a]] has bit b set when some needle
  // or exact form may start with the bytes a, b (ASCII case folded, which only widens it for the
  // exact forms; an entry of one byte sets every b). first_[a] 0: nothing starts with a. Most
  // bytes of a statement start some entry's first byte ('a', 's', 'e', '-'...) but not its first
  // two, and the candidates' own compares were most of this check's time. 256 bytes and 32 per
  // distinct first byte (a few hundred bytes for the detectors' needles), not a 64 Kbit table: the
  // relay often runs on cold caches, right after a backend had the cpu.
  uint8_t first_[256] = {};
  std::vector<std::array<uint64_t, 4>> pair_ = std::vector<std::array<uint64_t, 4>>(1);
  void index_pairs();
};

// A StatementTemplate's encoded pieces, in field order around the text and the outcome.
struct StatementPieces {
  std::string head, subject, decision, tail;
  // From [u32 LE n][n bytes] for head, subject, decision and tail (relay.ts packTemplate).
  bool parse(const uint8_t* p, size_t n);
};

// Whether every bound value in `values` (pg_bind's block) comes back from the handler's
// executionParams unchanged: valid UTF-8 that the pre-checks find nothing in, and for a NULL the
// text 'NULL' (which the handler puts in its place) likewise.
bool values_clean(const RedactionPrecheck& check, const PgSlice& values);

// Appends to `out` the AuditEvent's Statement field (28) for the statement `text` (empty for an
// execution: its template holds the text) with the bound `values` (pg_bind's block; nullptr for a
// simple query) under template `t`, answered by the CommandComplete body `complete` after
// `duration_ms`: the bytes proto/session-events.ts writes for the same statement. False (nothing
// appended) for a command tag that is not printable ASCII or whose count would not be a safe
// JavaScript integer.
bool encode_statement(const StatementPieces& t, const uint8_t* text, size_t text_len, const PgSlice* values, const uint8_t* complete,
                      size_t complete_len, double duration_ms, std::vector<uint8_t>* out);

// Test hook. JS: statementEvent(precheck: Buffer, pieces: Buffer, text: Buffer, complete: Buffer,
// durationMs: number, values?: Buffer) => Buffer | null: the Statement field the relay would write,
// or null where it would leave the statement to the handler (precheck or pieces that do not parse,
// text or values that are not clean or not UTF-8, a tag encode_statement refuses). `values` is a
// Bind's parameter block ([u16 count][i32 length, bytes]...), refused unless whole.
napi_value statement_event_js(napi_env env, napi_callback_info info);
