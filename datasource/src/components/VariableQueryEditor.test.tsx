import React from 'react';
import { render, screen } from '@testing-library/react';
import userEventLib from '@testing-library/user-event';

// No pause between key presses: nothing here depends on typing speed.
const userEvent = userEventLib.setup({ delay: null });

import { VariableQueryEditor } from './VariableQueryEditor';

test('routes by pool: the query and its definition', async () => {
  const onChange = jest.fn();
  const { rerender } = render(<VariableQueryEditor query={{ resource: 'hosts' }} onChange={onChange} />);
  const input = screen.getByLabelText('Values');
  await userEvent.click(input);
  await userEvent.type(input, 'Routes{Enter}');
  expect(onChange).toHaveBeenLastCalledWith({ resource: 'routes', pool: '' }, 'routes(pool=)');
  rerender(<VariableQueryEditor query={{ resource: 'routes', pool: '' }} onChange={onChange} />);
  await userEvent.type(screen.getByLabelText('Pool'), '$pool');
  await userEvent.tab();
  expect(onChange).toHaveBeenLastCalledWith({ resource: 'routes', pool: '$pool' }, 'routes(pool=$pool)');
});
