// ringcast.js: placeholder until the client lands (this session).
