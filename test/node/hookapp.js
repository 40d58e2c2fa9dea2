// An application's hook endpoints, for test/hooks_test.go: Node's own HTTP
// server and JSON, so the hook format is read and written by code that is
// not megacomet's. It prints "listening PORT", answers by the client id's
// prefix, and lists every call it got at GET /calls.
'use strict';
const http = require('http');

const calls = [];
const rules = {
  ok: () => ({ allow: true }),
  chan: () => ({ allow: true, channels: ['news', 'team-*'] }),
  listen: () => ({ allow: true, channels: ['shout'] }),
  exp: () => ({ allow: true, expire_at: Math.floor(Date.now() / 1000) + 2 }),
  deny: (c) => ({ allow: false, reason: 'banned: ' + c.id }),
  cookie: (c) => (c.headers.Cookie || '').includes('session=s3cret')
    ? { allow: true } : { allow: false, reason: 'no session' },
};

function answer(res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/calls') {
    return answer(res, 200, 'application/json', JSON.stringify(calls));
  }
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (d) => { body += d; });
  req.on('end', () => {
    let c;
    try {
      c = JSON.parse(body);
    } catch (e) {
      return answer(res, 400, 'text/plain', 'bad json\n');
    }
    c.path = req.url;
    c.contentType = req.headers['content-type'];
    calls.push(c);
    if (req.url === '/subscribe') {
      return answer(res, 200, 'application/json', JSON.stringify(
        c.channel === 'extra' ? { allow: true } : { allow: false, reason: 'not for you: ' + c.channel }));
    }
    if (req.url === '/publish') {
      if (c.channel !== 'shout') {
        return answer(res, 200, 'application/json', JSON.stringify({ allow: false, reason: 'quiet please' }));
      }
      return answer(res, 200, 'application/json', JSON.stringify({ allow: true, data: { text: String(c.data.text).toUpperCase() } }));
    }
    const prefix = c.id.split('-')[0];
    switch (prefix) {
      case 'hang':
        return; // never answers
      case 'err':
        return answer(res, 500, 'text/plain', 'boom\n');
      case 'html':
        return answer(res, 200, 'text/html', '<html><body>Welcome!</body></html>');
      case 'cut':
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': 100 });
        res.write('{"allow":tr');
        return setTimeout(() => res.socket.destroy(), 50);
      case 'slow':
        return setTimeout(() => answer(res, 200, 'application/json', '{"allow":true}'), 3000);
    }
    const rule = rules[prefix];
    answer(res, 200, 'application/json', JSON.stringify(rule ? rule(c) : { allow: false, reason: 'unknown user' }));
  });
});
server.keepAliveTimeout = 60000;
server.listen(0, '127.0.0.1', () => {
  console.log('listening ' + server.address().port);
});
