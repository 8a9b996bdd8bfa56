-- proxy.tokenizer (ringproxy): helpers over mysql.tokenizer's token lists.
local tokenizer = require("mysql.tokenizer")
local M = {}

M.tokenize = tokenizer.tokenize
M.normalize = tokenizer.normalize
M.first_stmt_token = tokenizer.first_stmt_token

-- Tokens without comments (the lexer drops comments already: a copy of the list).
function M.tokens_without_comments(tokens)
  local out = {}
  for i = 1, #tokens do
    if tokens[i].token_name ~= "TK_COMMENT" then out[#out + 1] = tokens[i] end
  end
  return out
end

-- The statement's tokens with keywords' text upper-cased.
function M.get_tokens(sql)
  local tokens = tokenizer.tokenize(sql)
  for i = 1, #tokens do
    if tokens[i].token_name:sub(1, 7) == "TK_SQL_" then tokens[i].text = tokens[i].text:upper() end
  end
  return tokens
end

return M
