/* calc — a small JSON API: arithmetic on two numbers.
 *
 *   POST /calc   {"op": "add"|"sub"|"mul"|"div", "a": <number>, "b": <number>}
 *   GET  /calc?op=add&a=1&b=2
 *     -> 200 {"result": 3}
 *     -> 400 {"error": "..."}   malformed JSON or query, missing/unknown op, bad number,
 *                               division by zero, result not finite
 *   /calc with another method -> 405 {"error": ...} (Allow: GET, POST)
 *   any other path            -> 404 {"error": "not found"}
 *
 * The JSON scanner is hand-written and bounded: it never reads past body_len (it does not
 * rely on the NUL after the body), nests at most MAX_DEPTH levels, and copies numbers into a
 * fixed buffer before converting them.  Unknown keys are skipped; duplicate keys are errors.
 * Ephemeral: nothing survives a request.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tenantvm.h"

#define MAX_DEPTH 32
#define NUM_MAX 64

struct scanner {
	const char *p;
	const char *end;
	const char *error; /* first error, or NULL */
};

static int fail(struct scanner *s, const char *msg)
{
	if (!s->error)
		s->error = msg;
	return 0;
}

static void skip_ws(struct scanner *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Scans a JSON string at s->p (which is at '"').  Decodes it into out (at most cap - 1 bytes,
 * NUL-terminated; *truncated set if longer).  \u escapes are validated; non-ASCII ones decode
 * to '?', which is enough to compare against ASCII keys and operator names. */
static int scan_string(struct scanner *s, char *out, size_t cap, int *truncated)
{
	size_t n = 0;
	*truncated = 0;
	if (s->p >= s->end || *s->p != '"')
		return fail(s, "expected a string");
	s->p++;
	for (;;) {
		if (s->p >= s->end)
			return fail(s, "unterminated string");
		unsigned char c = (unsigned char)*s->p++;
		if (c == '"')
			break;
		if (c < 0x20)
			return fail(s, "control character in a string");
		if (c == '\\') {
			if (s->p >= s->end)
				return fail(s, "unterminated string");
			char e = *s->p++;
			switch (e) {
			case '"': c = '"'; break;
			case '\\': c = '\\'; break;
			case '/': c = '/'; break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'n': c = '\n'; break;
			case 'r': c = '\r'; break;
			case 't': c = '\t'; break;
			case 'u': {
				if (s->end - s->p < 4)
					return fail(s, "bad \\u escape");
				int v = 0;
				for (int i = 0; i < 4; i++) {
					int h = hexval(s->p[i]);
					if (h < 0)
						return fail(s, "bad \\u escape");
					v = v * 16 + h;
				}
				s->p += 4;
				c = v < 0x80 ? (unsigned char)v : '?';
				break;
			}
			default:
				return fail(s, "bad escape in a string");
			}
		}
		if (n + 1 < cap)
			out[n++] = (char)c;
		else
			*truncated = 1;
	}
	if (cap)
		out[n] = 0;
	return 1;
}

/* Checks the JSON number grammar on [p, end) and converts it.  Returns the number of bytes
 * consumed (0 if there is no valid number). */
static size_t parse_number(const char *p, const char *end, double *out)
{
	const char *q = p;
	if (q < end && *q == '-')
		q++;
	if (q >= end)
		return 0;
	if (*q == '0') {
		q++;
	} else if (*q >= '1' && *q <= '9') {
		while (q < end && *q >= '0' && *q <= '9')
			q++;
	} else {
		return 0;
	}
	if (q < end && *q == '.') {
		q++;
		if (q >= end || *q < '0' || *q > '9')
			return 0;
		while (q < end && *q >= '0' && *q <= '9')
			q++;
	}
	if (q < end && (*q == 'e' || *q == 'E')) {
		q++;
		if (q < end && (*q == '+' || *q == '-'))
			q++;
		if (q >= end || *q < '0' || *q > '9')
			return 0;
		while (q < end && *q >= '0' && *q <= '9')
			q++;
	}
	size_t len = (size_t)(q - p);
	char buf[NUM_MAX];
	if (len >= sizeof buf)
		return 0;
	memcpy(buf, p, len);
	buf[len] = 0;
	*out = strtod(buf, 0);
	return len;
}

static int skip_value(struct scanner *s, int depth);

static int skip_literal(struct scanner *s, const char *word)
{
	size_t n = strlen(word);
	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return fail(s, "invalid value");
	s->p += n;
	return 1;
}

/* Skips any JSON value (the values of keys calc does not use). */
static int skip_value(struct scanner *s, int depth)
{
	char tmp[1];
	int trunc;
	double d;
	if (depth > MAX_DEPTH)
		return fail(s, "nested too deeply");
	skip_ws(s);
	if (s->p >= s->end)
		return fail(s, "expected a value");
	switch (*s->p) {
	case '"':
		return scan_string(s, tmp, sizeof tmp, &trunc);
	case 't':
		return skip_literal(s, "true");
	case 'f':
		return skip_literal(s, "false");
	case 'n':
		return skip_literal(s, "null");
	case '[':
	case '{': {
		char close = *s->p == '[' ? ']' : '}';
		int object = close == '}';
		s->p++;
		skip_ws(s);
		if (s->p < s->end && *s->p == close) {
			s->p++;
			return 1;
		}
		for (;;) {
			if (object) {
				skip_ws(s);
				if (!scan_string(s, tmp, sizeof tmp, &trunc))
					return 0;
				skip_ws(s);
				if (s->p >= s->end || *s->p != ':')
					return fail(s, "expected ':'");
				s->p++;
			}
			if (!skip_value(s, depth + 1))
				return 0;
			skip_ws(s);
			if (s->p < s->end && *s->p == ',') {
				s->p++;
				continue;
			}
			if (s->p < s->end && *s->p == close) {
				s->p++;
				return 1;
			}
			return fail(s, "expected ',' or the end of the array/object");
		}
	}
	default: {
		size_t n = parse_number(s->p, s->end, &d);
		if (!n)
			return fail(s, "invalid value");
		s->p += n;
		return 1;
	}
	}
}

struct calc {
	char op[8];
	int has_op, has_a, has_b;
	double a, b;
};

static int parse_json(const char *body, size_t len, struct calc *c, const char **error)
{
	struct scanner s = { body, body + len, 0 };
	skip_ws(&s);
	if (s.p >= s.end || *s.p != '{') {
		*error = "the body must be a JSON object";
		return 0;
	}
	s.p++;
	skip_ws(&s);
	if (s.p < s.end && *s.p == '}') {
		s.p++;
	} else {
		for (;;) {
			char key[16];
			int trunc;
			skip_ws(&s);
			if (!scan_string(&s, key, sizeof key, &trunc))
				break;
			skip_ws(&s);
			if (s.p >= s.end || *s.p != ':') {
				fail(&s, "expected ':'");
				break;
			}
			s.p++;
			skip_ws(&s);
			if (!trunc && strcmp(key, "op") == 0) {
				if (c->has_op++) {
					fail(&s, "duplicate key \"op\"");
					break;
				}
				if (s.p >= s.end || *s.p != '"') {
					fail(&s, "\"op\" must be a string");
					break;
				}
				if (!scan_string(&s, c->op, sizeof c->op, &trunc))
					break;
				if (trunc)
					c->op[0] = '?'; /* too long to be an operator */
			} else if (!trunc && (strcmp(key, "a") == 0 || strcmp(key, "b") == 0)) {
				int is_a = key[0] == 'a';
				int *seen = is_a ? &c->has_a : &c->has_b;
				if ((*seen)++) {
					fail(&s, is_a ? "duplicate key \"a\"" : "duplicate key \"b\"");
					break;
				}
				size_t n = parse_number(s.p, s.end, is_a ? &c->a : &c->b);
				if (!n) {
					fail(&s, is_a ? "\"a\" must be a number" : "\"b\" must be a number");
					break;
				}
				s.p += n;
			} else if (!skip_value(&s, 1)) {
				break;
			}
			skip_ws(&s);
			if (s.p < s.end && *s.p == ',') {
				s.p++;
				continue;
			}
			if (s.p < s.end && *s.p == '}') {
				s.p++;
				break;
			}
			fail(&s, "expected ',' or '}'");
			break;
		}
	}
	if (!s.error) {
		skip_ws(&s);
		if (s.p != s.end)
			fail(&s, "unexpected data after the JSON object");
	}
	*error = s.error;
	return s.error == 0;
}

/* Finds key in the query string and percent-decodes its value into out (cap bytes). */
static int query_get(const char *q, size_t qlen, const char *key, char *out, size_t cap)
{
	size_t klen = strlen(key);
	size_t i = 0;
	while (i < qlen) {
		size_t j = i;
		while (j < qlen && q[j] != '&')
			j++;
		/* [i, j) is one "name=value" pair */
		if (j - i > klen && memcmp(q + i, key, klen) == 0 && q[i + klen] == '=') {
			size_t n = 0;
			for (size_t k = i + klen + 1; k < j; k++) {
				char ch = q[k];
				if (ch == '%' && k + 2 < j) {
					int h1 = hexval(q[k + 1]), h2 = hexval(q[k + 2]);
					if (h1 >= 0 && h2 >= 0) {
						ch = (char)(h1 * 16 + h2);
						k += 2;
					}
				} else if (ch == '+') {
					ch = ' ';
				}
				if (n + 1 >= cap)
					return -1; /* too long */
				out[n++] = ch;
			}
			out[n] = 0;
			return 1;
		}
		i = j + 1;
	}
	return 0;
}

static int query_number(const char *q, size_t qlen, const char *key, double *out)
{
	char buf[NUM_MAX];
	int r = query_get(q, qlen, key, buf, sizeof buf);
	if (r <= 0)
		return r;
	size_t len = strlen(buf);
	return len && parse_number(buf, buf + len, out) == len ? 1 : -1;
}

static const struct tvm_header JSON_HEADERS[] = {
	{ "content-type", 12, "application/json", 16 },
};

static void respond_json(int status, const char *json, size_t len)
{
	respond_headers(status, JSON_HEADERS, 1, json, len);
}

static void respond_error(int status, const char *message)
{
	static const char head[] = "{\"error\": \"";
	char body[256];
	size_t n = sizeof head - 1;
	memcpy(body, head, n);
	/* JSON-escape the message (quotes, backslashes, control characters) */
	for (const char *m = message; *m && n + 8 < sizeof body; m++) {
		unsigned char ch = (unsigned char)*m;
		if (ch == '"' || ch == '\\') {
			body[n++] = '\\';
			body[n++] = (char)ch;
		} else if (ch < 0x20) {
			n += (size_t)snprintf(body + n, sizeof body - n, "\\u%04x", ch);
		} else {
			body[n++] = (char)ch;
		}
	}
	body[n++] = '"';
	body[n++] = '}';
	respond_json(status, body, n);
}

static int is_path(const struct tvm_request *r, const char *p)
{
	size_t n = strlen(p);
	return r->path_len == n && memcmp(r->path, p, n) == 0;
}

static int is_method(const struct tvm_request *r, const char *m)
{
	size_t n = strlen(m);
	return r->method_len == n && memcmp(r->method, m, n) == 0;
}

static void handle(const struct tvm_request *req)
{
	if (!is_path(req, "/calc")) {
		respond_error(404, "not found: the API is GET or POST /calc");
		return;
	}
	struct calc c = { 0 };
	if (is_method(req, "POST")) {
		const char *error = 0;
		if (!parse_json(req->body, req->body_len, &c, &error)) {
			respond_error(400, error ? error : "malformed JSON");
			return;
		}
	} else if (is_method(req, "GET") || is_method(req, "HEAD")) {
		int r = query_get(req->query, req->query_len, "op", c.op, sizeof c.op);
		if (r < 0)
			c.op[0] = '?';
		c.has_op = r != 0;
		int ra = query_number(req->query, req->query_len, "a", &c.a);
		int rb = query_number(req->query, req->query_len, "b", &c.b);
		if (ra < 0 || rb < 0) {
			respond_error(400, ra < 0 ? "a must be a number" : "b must be a number");
			return;
		}
		c.has_a = ra;
		c.has_b = rb;
	} else {
		static const struct tvm_header h[] = {
			{ "content-type", 12, "application/json", 16 },
			{ "allow", 5, "GET, POST", 9 },
		};
		static const char body[] = "{\"error\": \"method not allowed\"}";
		respond_headers(405, h, 2, body, sizeof body - 1);
		return;
	}
	if (!c.has_op || !c.has_a || !c.has_b) {
		respond_error(400, !c.has_op ? "missing op" : !c.has_a ? "missing a" : "missing b");
		return;
	}
	double result;
	if (strcmp(c.op, "add") == 0) {
		result = c.a + c.b;
	} else if (strcmp(c.op, "sub") == 0) {
		result = c.a - c.b;
	} else if (strcmp(c.op, "mul") == 0) {
		result = c.a * c.b;
	} else if (strcmp(c.op, "div") == 0) {
		if (c.b == 0) {
			respond_error(400, "division by zero");
			return;
		}
		result = c.a / c.b;
	} else {
		respond_error(400, "unknown op: use add, sub, mul or div");
		return;
	}
	if (result != result || result - result != 0) { /* NaN or infinite */
		respond_error(400, "the result is not a finite number");
		return;
	}
	char body[96];
	int n = snprintf(body, sizeof body, "{\"result\": %.17g}", result);
	respond_json(200, body, (size_t)n);
}

int main(void)
{
	for (;;) {
		struct tvm_request req;
		wait_for_request(&req);
		handle(&req);
	}
}
