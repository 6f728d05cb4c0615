<?php
// A minimal mailbox server behaving like the Go tool's signaling_server.php, for the
// compatibility test in core/tests/signaling_php.rs (run under `php -S`).
//
//   POST {"room": R, "role": X, "data": STRING}  -> 200 {"status":"ok"}
//   GET  ?room=R&role=X                           -> 200 and the data as posted, or 404
//   anything else                                 -> 405
//
// No long-poll (`wait` is ignored), no versions, no DELETE, no expiry: stunfwd peers
// must cope with exactly that. State is one JSON file, locked around each request.

header('Content-Type: application/json');

$file = getenv('STUNFWD_MAILBOX_FILE') ?: sys_get_temp_dir() . '/stunfwd_mailbox.json';

function with_store($file, $update)
{
    $fh = fopen($file, 'c+');
    flock($fh, LOCK_EX);
    $raw = stream_get_contents($fh);
    $store = json_decode($raw === '' ? '{}' : $raw, true) ?: [];
    $result = $update($store);
    ftruncate($fh, 0);
    rewind($fh);
    fwrite($fh, json_encode($store));
    flock($fh, LOCK_UN);
    fclose($fh);
    return $result;
}

$method = $_SERVER['REQUEST_METHOD'];

if ($method === 'POST') {
    $msg = json_decode(file_get_contents('php://input'), true);
    if (!is_array($msg) || !isset($msg['room'], $msg['role'], $msg['data'])) {
        http_response_code(400);
        echo json_encode(['error' => 'Missing or invalid room/role/data']);
        exit;
    }
    with_store($file, function (&$store) use ($msg) {
        $store[$msg['room']][$msg['role']] = $msg['data'];
    });
    echo json_encode(['status' => 'ok']);
    exit;
}

if ($method === 'GET') {
    $room = $_GET['room'] ?? null;
    $role = $_GET['role'] ?? null;
    if (!$room || !in_array($role, ['client', 'server'], true)) {
        http_response_code(400);
        echo json_encode(['error' => 'Missing or invalid room/role']);
        exit;
    }
    $data = with_store($file, function (&$store) use ($room, $role) {
        return $store[$room][$role] ?? null;
    });
    if ($data) {
        echo $data;
    } else {
        http_response_code(404);
        echo json_encode(['error' => 'Peer not found']);
    }
    exit;
}

http_response_code(405);
echo json_encode(['error' => 'Unsupported method']);
